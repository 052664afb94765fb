//! A burst of first requests for one role costs exactly one STS AssumeRole (Lyft made N).

use std::time::Duration;

use metadataproxy_tests::{
    CREDS_PATH, Daemon, ImdsCredentials, MappingFile, Moto, SRC_2, SlowRelay, get,
};
use serde_json::json;

const BURST: usize = 100;
/// How long each STS connection is held: the burst lands while the first AssumeRole (a request's
/// or a start-up prefetch's) is still in flight, so a missing single flight shows as extra calls.
const STS_DELAY: Duration = Duration::from_millis(1500);

/// AssumeRole calls moto answered for `role_arn` (counted by role, so a prefetch at start-up that
/// the burst joins counts once, and one it does not join shows up as a second call).
async fn calls_for(moto: &Moto, role_arn: &str) -> usize {
    moto.assumed_roles()
        .await
        .iter()
        .filter(|c| c.role_arn == role_arn)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_share_one_assume_role() {
    let moto = Moto::start().await;
    let arn = moto.create_role("role-sf", "/").await;
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-sf"}));
    let slow_sts = SlowRelay::start(moto.addr(), STS_DELAY);
    let daemon = Daemon::builder()
        .moto(&moto)
        .env("AWS_ENDPOINT_URL_STS", slow_sts.url())
        .mapping(&mapping)
        .default_account()
        .start()
        .await;

    let addr = daemon.addr();
    let path = format!("{CREDS_PATH}role-sf");
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { get(SRC_2, addr, &path, &[]).await })
        })
        .collect();
    let mut keys = Vec::with_capacity(BURST);
    for task in burst {
        let response = task
            .await
            .unwrap_or_else(|e| panic!("request task failed: {e}"));
        keys.push(ImdsCredentials::from_response(&response).access_key_id);
    }
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(
        keys.len(),
        1,
        "{BURST} callers got different keys: {keys:?}"
    );

    let calls = calls_for(&moto, &arn).await;
    assert_eq!(
        calls, 1,
        "{BURST} concurrent first requests made {calls} AssumeRole calls"
    );

    let again = get(SRC_2, addr, &path, &[]).await;
    assert_eq!(
        ImdsCredentials::from_response(&again).access_key_id,
        keys[0]
    );
    assert_eq!(
        calls_for(&moto, &arn).await,
        1,
        "a cached role was assumed again"
    );
}
