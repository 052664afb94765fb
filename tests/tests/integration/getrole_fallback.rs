//! Without `DEFAULT_ACCOUNT_ID` a bare role name is resolved with iam:GetRole, role path included.

use metadataproxy_tests::{ACCOUNT, Daemon, MappingFile, Moto, SRC_2, fetch_credentials};
use serde_json::json;

#[tokio::test]
async fn bare_role_name_resolves_through_get_role_with_its_path() {
    let moto = Moto::start().await;
    let arn = moto.create_role("pathrole", "/team/").await;
    assert_eq!(arn, format!("arn:aws:iam::{ACCOUNT}:role/team/pathrole"));
    let mapping = MappingFile::new(&json!({"127.0.0.2": "pathrole"}));
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .without("DEFAULT_ACCOUNT_ID")
        .start()
        .await;

    let creds = fetch_credentials(SRC_2, daemon.addr(), "pathrole").await;
    let calls = moto.assumed_roles().await;
    let call = calls
        .iter()
        .find(|c| c.access_key_id == creds.access_key_id)
        .unwrap_or_else(|| panic!("moto issued no such key; its AssumeRole calls: {calls:?}"));
    assert_eq!(call.role_arn, arn, "assumed the wrong ARN (path lost?)");
    let identity = moto
        .caller_identity_arn(&creds.access_key_id, &creds.secret_access_key, &creds.token)
        .await;
    assert!(
        identity.contains("assumed-role/pathrole/"),
        "runs as {identity}"
    );
}
