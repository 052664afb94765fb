//! Unit tests of the STS call budget on a paused tokio clock: spacing, and urgent calls first.

use std::sync::Mutex;

use super::*;

fn cap(n: u32) -> Arc<StsBudget> {
    StsBudget::new(NonZeroU32::new(n).unwrap())
}

/// Starts one acquiring task per ticket, each recording (name, start) when it is let through.
fn start_all(
    budget: &Arc<StsBudget>,
    tickets: Vec<(&'static str, Arc<Ticket>)>,
    log: &Arc<Mutex<Vec<(&'static str, Instant)>>>,
) -> Vec<tokio::task::JoinHandle<bool>> {
    tickets
        .into_iter()
        .map(|(name, ticket)| {
            let budget = Arc::clone(budget);
            let log = Arc::clone(log);
            tokio::spawn(async move {
                let waited = budget.acquire(&ticket).await;
                log.lock().unwrap().push((name, Instant::now()));
                waited
            })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn calls_are_spaced_so_no_second_holds_more_than_the_cap() {
    let budget = cap(5);
    let log = Arc::default();
    let tickets = (0..23).map(|_| ("bg", Ticket::new(false))).collect();
    let t0 = Instant::now();
    let mut waited = 0;
    for task in start_all(&budget, tickets, &log) {
        waited += usize::from(task.await.unwrap());
    }
    let starts: Vec<Instant> = log.lock().unwrap().iter().map(|(_, t)| *t).collect();
    assert_eq!(waited, 22, "the first goes at once, every other one waits");
    for pair in starts.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(200), "{pair:?}");
    }
    for (i, &start) in starts.iter().enumerate() {
        let in_window = starts[i..]
            .iter()
            .filter(|&&t| t < start + Duration::from_secs(1))
            .count();
        assert!(in_window <= 5, "{in_window} calls within 1 s of {start:?}");
    }
    // 23 calls at 5 a second: the last starts 22 × 200 ms after the first.
    assert_eq!(*starts.last().unwrap() - t0, Duration::from_millis(4400));
    assert_eq!(budget.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_budget_lets_a_call_through_at_once() {
    let budget = cap(2);
    assert!(!budget.acquire(&Ticket::new(false)).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    assert!(!budget.acquire(&Ticket::new(true)).await);
    assert_eq!(Instant::now(), t);
    // Right after it, the next waits its 500 ms.
    assert!(budget.acquire(&Ticket::new(true)).await);
    assert_eq!(Instant::now() - t, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn an_urgent_call_takes_the_next_token_before_queued_background_calls() {
    let budget = cap(1);
    let log = Arc::default();
    let background = (0..5).map(|_| ("bg", Ticket::new(false))).collect();
    let mut tasks = start_all(&budget, background, &log);
    tokio::time::sleep(Duration::from_millis(1500)).await; // two background calls went
    tasks.extend(start_all(
        &budget,
        vec![("caller", Ticket::new(true))],
        &log,
    ));
    for task in tasks {
        task.await.unwrap();
    }
    let order: Vec<&str> = log.lock().unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(order, ["bg", "bg", "caller", "bg", "bg", "bg"]);
    let caller_at = log.lock().unwrap()[2].1;
    let first = log.lock().unwrap()[0].1;
    assert_eq!(
        caller_at - first,
        Duration::from_secs(2),
        "the very next token"
    );
}

#[tokio::test(start_paused = true)]
async fn a_background_call_a_caller_waits_for_is_promoted() {
    let budget = cap(1);
    let log = Arc::default();
    let promoted = Ticket::new(false);
    let mut tickets: Vec<_> = (0..4).map(|_| ("bg", Ticket::new(false))).collect();
    tickets.push(("promoted", Arc::clone(&promoted)));
    let tasks = start_all(&budget, tickets, &log);
    tokio::time::sleep(Duration::from_millis(500)).await;
    promoted.promote();
    assert!(promoted.is_urgent());
    promoted.promoted().await; // already urgent: returns at once
    for task in tasks {
        task.await.unwrap();
    }
    let order: Vec<&str> = log.lock().unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(order, ["bg", "promoted", "bg", "bg", "bg"]);
}
