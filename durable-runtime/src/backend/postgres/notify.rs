//! Wake-up hints across processes: NOTIFY sent by a notifier task outside
//! every commit transaction (those queued meanwhile sent together), received by a dedicated LISTEN
//! connection outside the pool, and a poll tick that makes everything
//! correct without either (a lost hint costs one poll interval).
//!
//! The listener proves itself at every connect with a notification of its
//! own; one that does not come back (a transaction-mode pooler drops
//! LISTEN) leaves the backend polling at the short interval, with a
//! warning. After a reconnect it sends [`Notice::Ready`]: hints sent while
//! it was away are lost.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::backend::Notice;

use super::{Cached, Inner};

/// How long the listener waits for its own test notification.
const SELF_TEST: Duration = Duration::from_secs(3);
/// The largest payload PostgreSQL takes is 8000 bytes.
const MAX_PAYLOAD: usize = 7900;

/// A random number (from the standard library's hasher seeds).
pub(super) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// `d` moved by up to `frac` of itself either way.
pub(super) fn jitter(d: Duration, frac: f64) -> Duration {
    let unit = (random_u64() % 10_000) as f64 / 10_000.0; // [0, 1)
    d.mul_f64(1.0 + frac * (2.0 * unit - 1.0))
}

/// The sending side of the notifier.
pub(super) struct Hints(std::sync::Mutex<Option<mpsc::UnboundedSender<Notice>>>);

impl Hints {
    pub(super) fn new() -> (Hints, mpsc::UnboundedReceiver<Notice>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Hints(std::sync::Mutex::new(Some(tx))), rx)
    }

    /// Queues `notice` for the other processes.
    pub(super) fn send(&self, notice: Notice) {
        if let Some(tx) = &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(notice);
        }
    }

    /// Lets the notifier send what is queued and stop.
    pub(super) fn close(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Inner {
    /// The notification channel of this schema.
    fn channel(&self) -> String {
        format!("durable.{}", self.schema)
    }
}

/// The payload of `notice` sent by process `token`.
fn payload(token: u64, notice: &Notice) -> String {
    match notice {
        Notice::Ready => format!("{token:x}|R"),
        Notice::Cancelled { id } => format!("{token:x}|C{id}"),
        Notice::Ended { id } => format!("{token:x}|N{id}"),
        Notice::Paused { id } => format!("{token:x}|P{id}"),
        Notice::Event { id, name } => format!("{token:x}|E{}:{id}{name}", id.len()),
        Notice::Published { id, key } => format!("{token:x}|U{}:{id}{key}", id.len()),
    }
}

/// What a notification says: its sender's token and the notice, or a
/// self-test (`None` notice, with the test's text).
fn parse(payload: &str) -> Option<(u64, Result<Notice, &str>)> {
    let (token, rest) = payload.split_once('|')?;
    let token = u64::from_str_radix(token, 16).ok()?;
    let kind = rest.get(..1)?;
    let body = &rest[1..];
    let notice = match kind {
        "R" => Notice::Ready,
        "C" => Notice::Cancelled { id: body.into() },
        "N" => Notice::Ended { id: body.into() },
        "P" => Notice::Paused { id: body.into() },
        "E" => {
            let (len, rest) = body.split_once(':')?;
            let len: usize = len.parse().ok()?;
            Notice::Event {
                id: rest.get(..len)?.into(),
                name: rest.get(len..)?.into(),
            }
        }
        "U" => {
            let (len, rest) = body.split_once(':')?;
            let len: usize = len.parse().ok()?;
            Notice::Published {
                id: rest.get(..len)?.into(),
                key: rest.get(len..)?.into(),
            }
        }
        "T" => return Some((token, Err(body))),
        _ => return None,
    };
    Some((token, Ok(notice)))
}

/// Sends queued hints as NOTIFY, what queued during the last send at a
/// time, in their own statement (never inside a commit). A failed send is dropped:
/// the poll tick delivers what it carried.
pub(super) async fn notifier(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Notice>) {
    while let Some(first) = rx.recv().await {
        // No wait before a send: the hints queued while one is sent go
        // together in the next.
        let mut payloads = HashSet::new();
        payloads.insert(payload(inner.token, &first));
        while let Ok(next) = rx.try_recv() {
            payloads.insert(payload(inner.token, &next));
        }
        let payloads: Vec<String> = payloads
            .into_iter()
            .filter(|p| p.len() <= MAX_PAYLOAD)
            .collect();
        if let Err(e) = send(&inner, &payloads).await {
            tracing::debug!(durable.error = %e, "could not send wake-up hints; polling delivers them");
        }
    }
}

async fn send(inner: &Inner, payloads: &[String]) -> crate::error::Result<()> {
    let conn = inner.conn().await?;
    conn.execute_cached(
        "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
        &[&inner.channel(), &payloads],
    )
    .await
    .map_err(super::io("send wake-up hints"))?;
    Ok(())
}

/// Sends [`Notice::Ready`] every poll interval: the short one until the
/// listener proved itself, the long one after; and [`Notice::Paused`] for
/// each instance this worker owns that was paused or unpaused since the
/// last tick (so that an owner learns of it without the hint).
pub(super) async fn poll_tick(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut paused = std::collections::HashSet::new();
    loop {
        let every = if inner.listening.load(Ordering::SeqCst) {
            inner.options.poll_listening
        } else {
            inner.options.poll
        };
        tokio::select! {
            _ = tokio::time::sleep(jitter(every, 0.05)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let _ = inner.notices.send(Notice::Ready);
        if let Err(e) = inner.owned_paused(&mut paused).await {
            tracing::debug!(durable.error = %e, "could not look for paused instances");
        }
    }
}

/// Keeps a LISTEN connection open (reconnecting), forwarding the other
/// processes' hints to this one's subscribers. `ready` is told once the
/// first connection attempt has proved itself or not.
pub(super) async fn listener(inner: Arc<Inner>, ready: oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let mut stop = inner.stop.subscribe();
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        if inner.stopped() {
            return;
        }
        let ended = listen_once(&inner, &mut ready, &mut stop, connected_before).await;
        inner.listening.store(false, Ordering::SeqCst);
        inner.listener_pid.store(0, Ordering::SeqCst);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        match ended {
            Ok(()) => {
                connected_before = true;
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::debug!(durable.error = %e, "the wake-up listener could not connect");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(jitter(backoff, 0.2)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One listener connection, until it drops or the backend stops. `Err`
/// when it never got to listen.
async fn listen_once(
    inner: &Arc<Inner>,
    ready: &mut Option<oneshot::Sender<()>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    reconnect: bool,
) -> Result<(), String> {
    let (client, mut connection) = inner
        .config
        .connect(NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let listened = async {
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        let channel = inner.channel().replace('"', "\"\"");
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await?;
        Ok::<i32, tokio_postgres::Error>(pid)
    }
    .await;
    let pid = match listened {
        Ok(pid) => pid,
        Err(e) => {
            driver.abort();
            return Err(e.to_string());
        }
    };
    inner.listener_pid.store(pid, Ordering::SeqCst);
    // The self-test: a notification of ours must come back.
    let test = format!("{:x}", random_u64());
    let sent = async {
        let conn = inner.conn().await?;
        conn.execute(
            "SELECT pg_notify($1, $2)",
            &[&inner.channel(), &format!("{:x}|T{test}", inner.token)],
        )
        .await
        .map_err(super::io("send the listener's self-test"))
    }
    .await;
    let mut proven = false;
    if sent.is_ok() {
        let deadline = tokio::time::Instant::now() + SELF_TEST;
        while let Ok(Some(payload)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if forward(inner, &payload, Some(&test)) {
                proven = true;
                break;
            }
        }
    }
    if proven {
        inner.listening.store(true, Ordering::SeqCst);
    } else {
        tracing::warn!(
            durable.schema = %inner.schema,
            "the wake-up listener did not receive its own test notification (a transaction-mode pooler drops LISTEN); polling every {:?} instead",
            inner.options.poll
        );
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    if reconnect {
        // Hints sent while the listener was away are lost: look now.
        let _ = inner.notices.send(Notice::Ready);
    }
    loop {
        tokio::select! {
            payload = rx.recv() => match payload {
                Some(payload) => {
                    forward(inner, &payload, None);
                }
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    driver.abort();
    drop(client);
    Ok(())
}

/// Forwards a notification from another process to the subscribers;
/// returns whether it is the self-test `test`.
fn forward(inner: &Inner, payload: &str, test: Option<&str>) -> bool {
    match parse(payload) {
        Some((token, Err(body))) => token == inner.token && Some(body) == test,
        Some((token, Ok(notice))) => {
            if token != inner.token {
                let _ = inner.notices.send(notice);
            }
            false
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        for notice in [
            Notice::Ready,
            Notice::Cancelled { id: "a|b".into() },
            Notice::Ended { id: "x".into() },
            Notice::Paused { id: "p|q".into() },
            Notice::Event {
                id: "i:d".into(),
                name: "na:me".into(),
            },
        ] {
            let text = payload(42, &notice);
            let (token, parsed) = parse(&text).unwrap();
            assert_eq!(token, 42);
            assert_eq!(parsed, Ok(notice));
        }
        assert_eq!(parse("zz|R"), None);
        assert_eq!(parse("1|Q"), None);
    }
}
