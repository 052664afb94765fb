//! A burst of first requests for one role costs exactly one STS AssumeRole (Lyft made N).

use metadataproxy_tests::{CREDS_PATH, Daemon, ImdsCredentials, MappingFile, Moto, SRC_2, get};
use serde_json::json;

const BURST: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_share_one_assume_role() {
    let moto = Moto::start().await;
    moto.create_role("role-sf", "/").await;
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-sf"}));
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let before = moto.assume_role_count().await;

    let addr = daemon.addr();
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            tokio::spawn(
                async move { get(SRC_2, addr, &format!("{CREDS_PATH}role-sf"), &[]).await },
            )
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

    let calls = moto.assume_role_count().await - before;
    assert_eq!(
        calls, 1,
        "{BURST} concurrent first requests made {calls} AssumeRole calls"
    );

    let again = get(SRC_2, addr, &format!("{CREDS_PATH}role-sf"), &[]).await;
    assert_eq!(
        ImdsCredentials::from_response(&again).access_key_id,
        keys[0]
    );
    assert_eq!(
        moto.assume_role_count().await - before,
        1,
        "a cached role was assumed again"
    );
}
