//! Real IMDS clients pointed at the daemon: aws-sdk-rust's provider and Python botocore.

use aws_config::imds;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_credential_types::provider::ProvideCredentials;
use metadataproxy_tests::{
    Daemon, MappingFile, Moto, SRC_1, fetch_credentials, moto_and_daemon, path_var, required_path,
};
use serde_json::json;

/// moto with `role-sdk`, a daemon mapping 127.0.0.1 (where the SDKs connect from) to it, and the
/// role's credentials already fetched once so the clients' 1 s budget is not spent on STS.
async fn sdk_setup() -> (Moto, MappingFile, Daemon) {
    let (moto, mapping, daemon) =
        moto_and_daemon(&["role-sdk"], &json!({"127.0.0.1": "role-sdk"})).await;
    fetch_credentials(SRC_1, daemon.addr(), "role-sdk").await;
    (moto, mapping, daemon)
}

#[tokio::test]
async fn aws_sdk_rust_imds_provider_gets_credentials_moto_accepts() {
    let (moto, _mapping, daemon) = sdk_setup().await;
    let client = imds::Client::builder()
        .endpoint(format!("http://{}/", daemon.addr()))
        .unwrap_or_else(|e| panic!("IMDS endpoint: {e}"))
        .build();
    let provider = ImdsCredentialsProvider::builder()
        .imds_client(client)
        .build();
    let creds = provider
        .provide_credentials()
        .await
        .unwrap_or_else(|e| panic!("aws-sdk-rust IMDS provider failed: {e:?}"));
    let token = creds
        .session_token()
        .unwrap_or_else(|| panic!("no session token: {creds:?}"));
    let arn = moto
        .caller_identity_arn(creds.access_key_id(), creds.secret_access_key(), token)
        .await;
    assert!(
        arn.contains("assumed-role/role-sdk/"),
        "aws-sdk-rust runs as {arn}"
    );
}

/// What the Python script prints: the provider botocore used and who STS says it is.
const BOTOCORE_SCRIPT: &str = r#"
import json, os, botocore.session
session = botocore.session.get_session()
creds = session.get_credentials()
if creds is None:
    raise SystemExit("botocore found no credentials")
sts = session.create_client("sts", region_name="us-east-1", endpoint_url=os.environ["MOTO_URL"])
print(json.dumps({"method": creds.method, "arn": sts.get_caller_identity()["Arn"]}))
"#;

async fn botocore_identity(daemon: &Daemon, moto: &Moto, v1_disabled: bool) -> serde_json::Value {
    let python = required_path("METADATAPROXY_VENV")
        .join("bin")
        .join("python");
    let mut cmd = tokio::process::Command::new(&python);
    cmd.args(["-c", BOTOCORE_SCRIPT])
        .env_clear()
        .env("PATH", path_var())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{}/", daemon.addr()),
        )
        .env("MOTO_URL", moto.endpoint());
    if v1_disabled {
        cmd.env("AWS_EC2_METADATA_V1_DISABLED", "true");
    }
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "botocore (v1 disabled: {v1_disabled}) failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("botocore printed {stdout:?}: {e}"))
}

#[tokio::test]
async fn botocore_gets_credentials_with_and_without_imdsv1() {
    let (moto, _mapping, daemon) = sdk_setup().await;
    for v1_disabled in [false, true] {
        let identity = botocore_identity(&daemon, &moto, v1_disabled).await;
        assert_eq!(
            identity["method"], "iam-role",
            "botocore's provider: {identity}"
        );
        let arn = identity["arn"].as_str().unwrap_or_default();
        assert!(
            arn.contains("assumed-role/role-sdk/"),
            "botocore (v1 disabled: {v1_disabled}) runs as {arn}"
        );
    }
}
