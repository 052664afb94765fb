//! `IMDSv2` tokens against the real daemon: bound to the caller that obtained them (two callers
//! told apart by their source address through the mapping file: a loopback one and one at this
//! machine's other address, since every loopback address is one caller), expiring exactly at
//! their TTL, and bounded per caller so that one caller — from however many loopback addresses —
//! cannot exhaust the store for the others.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use metadataproxy_tests::{
    CREDS_PATH, Daemon, SRC_2, SRC_3, get, moto_and_daemon, other_local_ipv4, put_token, token,
};
use serde_json::json;

const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const INSTANCE_ID: &str = "/latest/meta-data/instance-id";

/// The status of a GET of `path` from `src` presenting `token`.
async fn status_with(src: Ipv4Addr, dst: SocketAddr, path: &str, token: &str) -> u16 {
    get(src, dst, path, &[(TOKEN_HEADER, token)]).await.status
}

#[tokio::test]
async fn a_token_is_refused_for_another_caller() {
    let Some(other) = other_local_ipv4() else {
        return;
    };
    let (_moto, _mapping, daemon) = moto_and_daemon(
        &["role-a", "role-b"],
        &json!({"127.0.0.2": "role-a", other.to_string(): "role-b"}),
    )
    .await;
    let addr = daemon.addr();
    let a = token(SRC_2, addr).await;
    let role_a = format!("{CREDS_PATH}role-a");
    let mine = get(SRC_2, addr, &role_a, &[(TOKEN_HEADER, &a)]).await;
    assert_eq!(mine.status, 200, "the owner: {mine:?}");
    assert!(mine.body.contains("AccessKeyId"), "{mine:?}");
    // Another caller presenting it gets 401 on every route, exactly like a made-up token.
    for path in [
        CREDS_PATH,
        "/latest/meta-data/iam/security-credentials/role-b",
        INSTANCE_ID,
    ] {
        let stolen = get(other, addr, path, &[(TOKEN_HEADER, &a)]).await;
        assert_eq!(stolen.status, 401, "{path} with another caller's token");
        let made_up = get(
            other,
            addr,
            path,
            &[(TOKEN_HEADER, "A".repeat(43).as_str())],
        )
        .await;
        assert_eq!(
            (stolen.status, stolen.body.as_str()),
            (made_up.status, made_up.body.as_str()),
            "a stolen token is indistinguishable from a made-up one"
        );
    }
    // Trying it did not spoil it for its owner, and the other caller's own token works.
    assert_eq!(status_with(SRC_2, addr, &role_a, &a).await, 200);
    let b = token(other, addr).await;
    assert_eq!(
        status_with(
            other,
            addr,
            "/latest/meta-data/iam/security-credentials/role-b",
            &b
        )
        .await,
        200
    );
    assert_eq!(status_with(SRC_2, addr, &role_a, &b).await, 401);
}

#[tokio::test]
async fn every_loopback_address_is_one_caller() {
    // Any host process may bind any 127.x.y.z: the addresses tell no callers apart (tokens,
    // connection limits). Roles are still given by address, as the mapping file says.
    let (_moto, _mapping, daemon) = moto_and_daemon(
        &["role-a", "role-b"],
        &json!({"127.0.0.2": "role-a", "127.0.0.3": "role-b"}),
    )
    .await;
    let addr = daemon.addr();
    let t = token(SRC_2, addr).await;
    let b = get(SRC_3, addr, CREDS_PATH, &[(TOKEN_HEADER, &t)]).await;
    assert_eq!((b.status, b.body.as_str()), (200, "role-b"));
}

#[tokio::test]
async fn a_token_expires_after_its_ttl() {
    let daemon = Daemon::builder().start().await;
    let addr = daemon.addr();
    let r = put_token(SRC_2, addr, Some("1")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-aws-ec2-metadata-token-ttl-seconds"), Some("1"));
    let t = r.body;
    assert_eq!(
        status_with(SRC_2, addr, INSTANCE_ID, &t).await,
        200,
        "fresh"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        status_with(SRC_2, addr, INSTANCE_ID, &t).await,
        401,
        "expired after 1 s"
    );
    // A longer token issued at the same time is unaffected.
    let long = token(SRC_2, addr).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status_with(SRC_2, addr, INSTANCE_ID, &long).await, 200);
}

#[tokio::test]
async fn one_caller_cannot_exhaust_the_token_store() {
    let Some(other) = other_local_ipv4() else {
        return;
    };
    let daemon = Daemon::builder()
        .env("TOKEN_MAX_PER_CALLER", "3")
        .env("TOKEN_MAX_TOTAL", "6")
        .start()
        .await;
    let addr = daemon.addr();
    let others: Vec<String> = tokens_of(other, addr, 2).await;
    // One caller asks for 50 tokens, each from another loopback address: it is one caller all the
    // same, and keeps only its newest 3.
    let mut flood = Vec::new();
    for i in 0..50_u8 {
        flood.push(token(Ipv4Addr::new(127, 0, 2, i + 1), addr).await);
    }
    let (old, newest) = flood.split_at(flood.len() - 3);
    for t in newest {
        assert_eq!(status_with(SRC_2, addr, INSTANCE_ID, t).await, 200);
    }
    for t in &old[old.len() - 3..] {
        assert_eq!(
            status_with(SRC_2, addr, INSTANCE_ID, t).await,
            401,
            "dropped"
        );
    }
    // The other caller's tokens survived the flood, and it still gets new ones.
    for t in &others {
        assert_eq!(status_with(other, addr, INSTANCE_ID, t).await, 200);
    }
    let again = token(other, addr).await;
    assert_eq!(status_with(other, addr, INSTANCE_ID, &again).await, 200);
}

/// `n` tokens of the caller at `src`.
async fn tokens_of(src: Ipv4Addr, addr: SocketAddr, n: usize) -> Vec<String> {
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        tokens.push(token(src, addr).await);
    }
    tokens
}
