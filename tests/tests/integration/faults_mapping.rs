//! The mapping file rewritten (in place, then by rename) while callers are fetching credentials
//! without pause: every answer is the caller's old or new role, never another caller's; once the
//! rewrite has settled, only the new one. Every key served is checked with moto.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metadataproxy_tests::{CREDS_PATH, ImdsCredentials, get, moto_and_daemon, token};
use serde_json::json;

const CALLERS: u8 = 8;

fn caller(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 30 + i)
}

/// The mapping of every caller to its role of `generation` (`g0-<i>`, `g1-<i>`, …).
fn mapping(generation: u8) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = (0..CALLERS)
        .map(|i| (caller(i).to_string(), json!(format!("g{generation}-{i}"))))
        .collect();
    serde_json::Value::Object(map)
}

/// One answer a caller got: when, which generation was current, the role listed, and the key.
#[derive(Debug, Clone)]
struct Seen {
    /// The generation the test had written when the request began.
    generation: u8,
    /// The generation it had written when the listing arrived (a slow request may span a write).
    written_after: u8,
    role: String,
    key: Option<(String, String, String)>,
}

/// Caller `i` asks for its listing and then those credentials, alternating IMDSv1 and v2, until
/// `stop_at`; records what it got and which generation the test had written at the time.
async fn load(
    i: u8,
    addr: SocketAddr,
    written: Arc<AtomicU8>,
    stop_at: Arc<Mutex<Option<Instant>>>,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut n = 0u32;
    loop {
        if stop_at
            .lock()
            .expect("stop lock")
            .is_some_and(|t| Instant::now() > t)
        {
            return seen;
        }
        let generation = written.load(Ordering::SeqCst);
        n += 1;
        let tok = if n.is_multiple_of(2) {
            Some(token(caller(i), addr).await)
        } else {
            None
        };
        let headers: Vec<(&str, &str)> = tok
            .as_deref()
            .map(|t| ("X-aws-ec2-metadata-token", t))
            .into_iter()
            .collect();
        let list = get(caller(i), addr, CREDS_PATH, &headers).await;
        let written_after = written.load(Ordering::SeqCst);
        assert_eq!(list.status, 200, "caller {i} listing: {list:?}");
        let role = list.body.clone();
        let creds = get(caller(i), addr, &format!("{CREDS_PATH}{role}"), &headers).await;
        // The mapping may change between the two requests: then the role is not the caller's any
        // more and must be refused, not served.
        let key = match creds.status {
            200 => {
                let c = ImdsCredentials::from_response(&creds);
                Some((c.access_key_id, c.secret_access_key, c.token))
            }
            404 => None,
            _ => panic!("caller {i} credentials for {role}: {creds:?}"),
        };
        seen.push(Seen {
            generation,
            written_after,
            role,
            key,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewriting_the_mapping_under_load_never_serves_another_callers_role() {
    let roles: Vec<String> = (0..3)
        .flat_map(|g| (0..CALLERS).map(move |i| format!("g{g}-{i}")))
        .collect();
    let role_refs: Vec<&str> = roles.iter().map(String::as_str).collect();
    let (moto, file, daemon) = moto_and_daemon(&role_refs, &mapping(0)).await;
    let addr = daemon.addr();
    // The generation the test last wrote; a caller may see it or the one before until it settles.
    let written = Arc::new(AtomicU8::new(0));
    let stop_at = Arc::new(Mutex::new(None::<Instant>));

    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| tokio::spawn(load(i, addr, Arc::clone(&written), Arc::clone(&stop_at))))
        .collect();

    tokio::time::sleep(Duration::from_secs(3)).await;
    written.store(1, Ordering::SeqCst);
    file.write(&mapping(1));
    tokio::time::sleep(Duration::from_secs(8)).await;
    written.store(2, Ordering::SeqCst);
    file.replace(&mapping(2));
    tokio::time::sleep(Duration::from_secs(8)).await;
    *stop_at.lock().expect("stop lock") = Some(Instant::now());

    let mut by_key: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    let mut total = 0;
    let mut refused = 0;
    for (i, task) in (0..CALLERS).zip(tasks) {
        let seen = task.await.expect("caller task");
        assert!(
            seen.len() > 20,
            "caller {i} made only {} requests",
            seen.len()
        );
        // The generation a caller sees never goes back.
        let mut latest = 0u8;
        for s in &seen {
            let (g, who) = s
                .role
                .strip_prefix('g')
                .and_then(|r| r.split_once('-'))
                .and_then(|(g, c)| Some((g.parse::<u8>().ok()?, c.parse::<u8>().ok()?)))
                .unwrap_or_else(|| panic!("caller {i} listed {:?}", s.role));
            assert_eq!(
                who, i,
                "caller {i} was given caller {who}'s role {}",
                s.role
            );
            // At most one behind what was written when the request began (the daemon rereads
            // the file every second), never ahead of what was written when it was answered.
            assert!(
                g + 1 >= s.generation && g <= s.written_after,
                "caller {i} saw generation {g} while {} was current ({} when answered)",
                s.generation,
                s.written_after
            );
            assert!(g >= latest, "caller {i} went back from g{latest} to g{g}");
            latest = g;
            if let Some((key, secret, token)) = &s.key {
                by_key.insert(key.clone(), (s.role.clone(), secret.clone(), token.clone()));
            } else {
                refused += 1;
            }
            total += 1;
        }
        // The last second of load: the rewrite had settled long before.
        let tail = &seen[seen.len() - 5..];
        assert!(
            tail.iter()
                .all(|s| s.role == format!("g2-{i}") && s.key.is_some()),
            "caller {i} after the rewrites settled: {tail:?}"
        );
    }
    for (key, (role, secret, token)) in &by_key {
        let arn = moto.caller_identity_arn(key, secret, token).await;
        assert!(
            arn.contains(&format!("assumed-role/{role}/")),
            "key served for {role} belongs to {arn}"
        );
    }
    eprintln!(
        "{total} listing+credential rounds by {CALLERS} callers across two rewrites; {refused} \
         refused mid-change (404); {} distinct keys, each checked with moto",
        by_key.len()
    );
}
