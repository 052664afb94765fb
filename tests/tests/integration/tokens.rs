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

/// Tokens are sealed, not stored: a caller asking for many keeps every one, and no number of
/// them touches another caller's. The retired `TOKEN_MAX_*` settings still let the daemon start,
/// with a warning naming them.
#[tokio::test]
async fn a_flood_of_tokens_leaves_every_token_valid_and_retired_limits_only_warn() {
    let Some(other) = other_local_ipv4() else {
        return;
    };
    let daemon = Daemon::builder()
        .env("TOKEN_MAX_PER_CALLER", "3")
        .env("TOKEN_MAX_TOTAL", "6")
        .start()
        .await;
    let addr = daemon.addr();
    let logs = daemon.wait_for_log("retired setting ignored").await;
    let warned: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("retired setting ignored"))
        .collect();
    for name in ["TOKEN_MAX_PER_CALLER", "TOKEN_MAX_TOTAL"] {
        assert!(
            warned.iter().any(|l| l.contains(name)),
            "no warning names {name}: {warned:?}"
        );
    }
    let others: Vec<String> = tokens_of(other, addr, 2).await;
    // One caller asks for 50 tokens, each from another loopback address: all of them work,
    // from any loopback address (one caller).
    let mut flood = Vec::new();
    for i in 0..50_u8 {
        flood.push(token(Ipv4Addr::new(127, 0, 2, i + 1), addr).await);
    }
    for t in &flood {
        assert_eq!(status_with(SRC_2, addr, INSTANCE_ID, t).await, 200);
        assert_eq!(
            status_with(other, addr, INSTANCE_ID, t).await,
            401,
            "another caller presented the flood's token"
        );
    }
    for t in &others {
        assert_eq!(status_with(other, addr, INSTANCE_ID, t).await, 200);
        assert_eq!(status_with(SRC_2, addr, INSTANCE_ID, t).await, 401);
    }
}

/// `n` tokens of the caller at `src`.
async fn tokens_of(src: Ipv4Addr, addr: SocketAddr, n: usize) -> Vec<String> {
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        tokens.push(token(src, addr).await);
    }
    tokens
}
