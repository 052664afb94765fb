//! The callers of the throttle scenario: their addresses, roles and mapping file; holders asking
//! for the credentials they hold in a loop; new callers asking until they are served.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinHandle;

use crate::bench::client::{self, Response};

/// Concurrent workers asking for the holders' credentials.
pub const HOLDER_WORKERS: usize = 4;
/// Pause of each holder worker between two requests.
pub const HOLDER_PAUSE: Duration = Duration::from_millis(10);
/// A holder's answer later than this is a failure: the AWS SDKs' IMDS timeout.
pub const SDK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a new caller asks until it is served.
pub const ASK_EVERY: Duration = Duration::from_millis(200);
/// Longest failure text kept from an answer's body.
const TEXT_MAX: usize = 200;

/// Most callers [`caller_ip`] can address: 127.0.200.x to 127.0.255.x.
pub const MOST_CALLERS: usize = 56 * 250;

/// The source address of caller `i`: 127.0.200.1 upwards, 250 to a /24 (apart from the
/// many-callers run's 127.0.1.1 upwards, the scale runs' 127.1.x.y and the load runs' 127.0.0.1).
/// `i` is below [`MOST_CALLERS`]: `run` checks its size first.
pub fn caller_ip(i: usize) -> Ipv4Addr {
    let third = u8::try_from(200 + i / 250).expect("at most 14,000 throttle callers");
    let fourth = u8::try_from(1 + i % 250).expect("i % 250 + 1 fits");
    Ipv4Addr::new(127, 0, third, fourth)
}

/// The role of caller `i`.
pub fn role(i: usize) -> String {
    format!("bench-throttle-{i:04}")
}

fn creds_path(i: usize) -> String {
    format!("/latest/meta-data/iam/security-credentials/{}", role(i))
}

/// Maps the callers `callers` to their roles; written to a temporary file then renamed, so the
/// daemon never reads half a file.
pub fn write_mapping(path: &Path, callers: Range<usize>) -> Result<()> {
    let map: serde_json::Map<String, serde_json::Value> = callers
        .map(|i| (caller_ip(i).to_string(), role(i).into()))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&map)?)?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The `AccessKeyId` of a credentials document (never the secret parts).
fn access_key_id(body: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(doc["AccessKeyId"].as_str()?.to_owned())
}

/// A failure's text from an answer that is not credentials: its status and the start of its
/// body (an error document; a `200` body is never quoted, it could hold a secret).
fn refusal_text(resp: &Response) -> String {
    if resp.status == 200 {
        return "200 without an AccessKeyId".to_owned();
    }
    let text = resp.text();
    let mut end = text.len().min(TEXT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} {}", resp.status, text[..end].trim())
}

/// Each holder's `AccessKeyId`, asked once (before STS throttles): holder `i` has `keys[i]`.
pub async fn held_keys(addr: SocketAddr, holders: usize) -> Result<Vec<String>> {
    let mut keys = Vec::with_capacity(holders);
    for i in 0..holders {
        let resp = client::once(Some(caller_ip(i)), addr, "GET", &creds_path(i), &[], b"")
            .await
            .with_context(|| format!("holder {} asking for its credentials", caller_ip(i)))?;
        match access_key_id(&resp.body) {
            Some(key) if resp.status == 200 => keys.push(key),
            _ => bail!(
                "holder {} was not served before STS throttled: {}",
                caller_ip(i),
                refusal_text(&resp)
            ),
        }
    }
    Ok(keys)
}

/// Why an answer to holder `i` (holding `key`), `took` long, is a failure; `None` if it is not.
fn holder_failure(
    i: usize,
    answer: &Result<Response>,
    took: Duration,
    key: &str,
) -> Option<String> {
    let why = match answer {
        Err(e) => format!("no answer: {e:#}"),
        Ok(resp) => match access_key_id(&resp.body) {
            Some(got) if resp.status == 200 && got == key => {
                if took <= SDK_TIMEOUT {
                    return None;
                }
                format!("answered after {took:?}, past the SDKs' {SDK_TIMEOUT:?} timeout")
            }
            Some(_) if resp.status == 200 => "200 with another AccessKeyId".to_owned(),
            _ => refusal_text(resp),
        },
    };
    Some(format!("{} ({}): {why}", role(i), caller_ip(i)))
}

/// What the holders were answered.
#[derive(Debug, Clone, Default)]
pub struct HolderAnswers {
    /// Answers (and requests without one).
    pub answers: usize,
    /// Those that were not a `200` with the holder's own `AccessKeyId` within [`SDK_TIMEOUT`].
    pub failures: usize,
    /// The first failure, for the report.
    pub first_failure: Option<String>,
    /// Every answer's time, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl HolderAnswers {
    fn record(&mut self, failure: Option<String>, took: Duration) {
        self.answers += 1;
        self.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        if let Some(why) = failure {
            self.failures += 1;
            self.first_failure.get_or_insert(why);
        }
    }

    fn merge(&mut self, other: Self) {
        self.answers += other.answers;
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.latencies_us.extend(other.latencies_us);
    }
}

/// The holders asking for their credentials until [`Holders::stop`].
#[derive(Debug)]
pub struct Holders {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<HolderAnswers>>,
}

impl Holders {
    /// [`HOLDER_WORKERS`] workers, each asking for the next holder's credentials (holder `i`
    /// holds `keys[i]`) every [`HOLDER_PAUSE`], on a new connection from the holder's address.
    pub fn start(addr: SocketAddr, keys: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let keys: Arc<[String]> = keys.into();
        let next = Arc::new(AtomicUsize::new(0));
        let workers = (0..HOLDER_WORKERS)
            .map(|_| {
                let (stop, keys, next) = (Arc::clone(&stop), Arc::clone(&keys), Arc::clone(&next));
                tokio::spawn(async move {
                    let mut out = HolderAnswers::default();
                    while !keys.is_empty() && !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed) % keys.len();
                        let start = Instant::now();
                        let answer =
                            client::once(Some(caller_ip(i)), addr, "GET", &creds_path(i), &[], b"")
                                .await;
                        let took = start.elapsed();
                        out.record(holder_failure(i, &answer, took, &keys[i]), took);
                        tokio::time::sleep(HOLDER_PAUSE).await;
                    }
                    out
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops the workers; everything they were answered.
    pub async fn stop(self) -> Result<HolderAnswers> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = HolderAnswers::default();
        for worker in self.workers {
            all.merge(worker.await.context("a holder worker panicked")?);
        }
        all.latencies_us.sort_unstable();
        Ok(all)
    }
}

/// What one new caller went through.
#[derive(Debug, Clone, Default)]
pub struct NewCaller {
    /// Its role.
    pub role: String,
    /// From its first request to the answer with its credentials; `None`: not served in time.
    pub served_after: Option<Duration>,
    /// The answers before that, by status (`0`: no answer, e.g. a timeout).
    pub refused: BTreeMap<u16, usize>,
}

/// New caller `i` asks for its credentials every [`ASK_EVERY`] (after each answer) until it gets
/// a `200` with an `AccessKeyId`, or until `deadline`.
pub async fn ask_until_served(addr: SocketAddr, i: usize, deadline: Instant) -> NewCaller {
    let first = Instant::now();
    let mut out = NewCaller {
        role: role(i),
        ..NewCaller::default()
    };
    loop {
        let answer = client::once(Some(caller_ip(i)), addr, "GET", &creds_path(i), &[], b"").await;
        let status = match &answer {
            Ok(resp) if resp.status == 200 && access_key_id(&resp.body).is_some() => {
                out.served_after = Some(first.elapsed());
                return out;
            }
            Ok(resp) => resp.status,
            Err(_) => 0,
        };
        *out.refused.entry(status).or_default() += 1;
        if Instant::now() + ASK_EVERY > deadline {
            return out;
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as [`client::once`] returns it (`Ok`: one came).
    fn resp(status: u16, body: &str) -> Result<Response> {
        answered(Response {
            status,
            body: body.as_bytes().to_vec(),
        })
    }

    #[expect(clippy::unnecessary_wraps, reason = "the shape client::once returns")]
    fn answered(resp: Response) -> Result<Response> {
        Ok(resp)
    }

    const DOC: &str =
        r#"{"Code":"Success","AccessKeyId":"ASIAHELD","SecretAccessKey":"s3cr3t","Token":"t0k3n"}"#;

    #[test]
    fn callers_have_their_own_range() {
        assert_eq!(caller_ip(0), Ipv4Addr::new(127, 0, 200, 1));
        assert_eq!(caller_ip(249), Ipv4Addr::new(127, 0, 200, 250));
        assert_eq!(caller_ip(250), Ipv4Addr::new(127, 0, 201, 1));
        assert_eq!(caller_ip(MOST_CALLERS - 1), Ipv4Addr::new(127, 0, 255, 250));
        assert_eq!(role(7), "bench-throttle-0007");
        assert_eq!(
            creds_path(12),
            "/latest/meta-data/iam/security-credentials/bench-throttle-0012"
        );
    }

    #[test]
    fn a_holder_fails_unless_served_its_own_key_in_time() {
        let fast = Duration::from_millis(3);
        assert_eq!(holder_failure(0, &resp(200, DOC), fast, "ASIAHELD"), None);
        let slow = holder_failure(0, &resp(200, DOC), Duration::from_millis(1500), "ASIAHELD");
        assert!(slow.is_some_and(|w| w.contains("past the SDKs'")));
        let other = holder_failure(1, &resp(200, DOC), fast, "ASIAOTHER").unwrap();
        assert_eq!(
            other,
            "bench-throttle-0001 (127.0.200.2): 200 with another AccessKeyId"
        );
        assert!(!other.contains("s3cr3t") && !other.contains("ASIAHELD"));
        let refused = holder_failure(
            2,
            &resp(503, r#"{"Code":"Throttling","Message":"slow down"}"#),
            fast,
            "ASIAHELD",
        )
        .unwrap();
        assert!(refused.ends_with(r#"503 {"Code":"Throttling","Message":"slow down"}"#));
        let none = holder_failure(3, &Err(anyhow::anyhow!("reset")), fast, "ASIAHELD").unwrap();
        assert!(none.ends_with("no answer: reset"), "{none}");
        let odd = holder_failure(0, &resp(200, "not json s3cr3t"), fast, "ASIAHELD").unwrap();
        assert!(odd.ends_with("200 without an AccessKeyId"), "{odd}");
    }

    #[test]
    fn refusals_are_quoted_short() {
        let long = "é".repeat(300);
        let text = refusal_text(&Response {
            status: 500,
            body: long.into_bytes(),
        });
        assert!(text.len() <= 4 + TEXT_MAX, "{}", text.len());
    }

    #[test]
    fn holder_answers_merge_keeping_the_first_failure() {
        let mut a = HolderAnswers::default();
        a.record(None, Duration::from_micros(5));
        let mut b = HolderAnswers::default();
        b.record(Some("first".into()), Duration::from_micros(7));
        b.record(Some("second".into()), Duration::from_micros(9));
        a.merge(b);
        assert_eq!((a.answers, a.failures), (3, 2));
        assert_eq!(a.first_failure.as_deref(), Some("first"));
        assert_eq!(a.latencies_us, [5, 7, 9]);
    }

    #[test]
    fn the_mapping_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        write_mapping(&path, 249..251).unwrap();
        let map: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            map,
            serde_json::json!({
                "127.0.200.250": "bench-throttle-0249",
                "127.0.201.1": "bench-throttle-0250",
            })
        );
        assert!(!path.with_extension("tmp").exists());
    }
}
