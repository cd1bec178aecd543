//! `sleep!`, `sleep_until!` and `wait_for!` beside `step!`: the issue's
//! example with serde payloads, a wait with and without a timeout, sites in
//! `tokio::join!` (futures there, so they run concurrently), in `if`,
//! `match`, `while` and `for` (a loop gives occurrences of one name), in
//! `println!` and an async block, and `SITES` holding every name of every
//! kind in source order.

#![deny(warnings)]

use durable::prelude::*;
use durable::{IntoWorkflow, Workflow};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    title: String,
    reminders: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approval {
    approver: String,
    approved: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    Rejected(String),
    TimedOut,
}

mod drafts {
    pub async fn create(request: &super::Request) -> Result<String, String> {
        Ok(format!("draft-{}", request.title))
    }
}

/// The example.
#[durable]
async fn onboarding(_ctx: &Ctx, req: Request) -> Result<Outcome, String> {
    step!("create-draft", drafts::create(&req).await)?;
    let approval: Option<Approval> =
        wait_for!("manager-approval", timeout = Duration::from_secs(3 * 86400));
    let payload: Approval = wait_for!("other-event");
    sleep!("cool-off", Duration::from_secs(86400));
    sleep_until!(
        "launch",
        std::time::SystemTime::now() + Duration::from_secs(60)
    );
    match approval {
        Some(approval) if approval.approved && payload.approved => Ok(Outcome::Done),
        Some(approval) => Ok(Outcome::Rejected(approval.approver)),
        None => Ok(Outcome::TimedOut),
    }
}

/// Every control-flow shape, and joins.
#[durable]
async fn shapes(ctx: &Ctx, req: Request) -> Result<u32, String> {
    let (approval, (), draft) = tokio::join!(
        wait_for!("joined-approval"),
        sleep!("joined-nap", Duration::from_millis(10)),
        step!("joined-step", drafts::create(&req).await),
    );
    let approval: Approval = approval;
    let _draft = draft?;
    let (first, second): (Option<u32>, u64) = tokio::join!(
        wait_for!("joined-timeout", timeout = Duration::from_secs(5)),
        wait_for!("joined-plain"),
    );
    let mut total = first.unwrap_or(0) + u32::try_from(second).unwrap_or(0);
    if approval.approved {
        sleep!("approved-nap", Duration::from_secs(1));
    } else {
        sleep_until!("rejected-until", SystemTime::UNIX_EPOCH);
    }
    match req.reminders {
        0 => {}
        n => {
            for _ in 0..n {
                sleep!("reminder-interval", Duration::from_secs(3600));
                let ack: Option<bool> =
                    wait_for!("reminder-ack", timeout = Duration::from_secs(60));
                if ack == Some(true) {
                    break;
                }
            }
        }
    }
    let mut polls = 0;
    while polls < 3 {
        let count: u32 = wait_for!("poll");
        total += count;
        polls += 1;
    }
    let printed: u8 = wait_for!("printed");
    println!("{printed} {:?}", sleep!("printed-nap", Duration::ZERO));
    let later = async {
        sleep!("in-async-block", Duration::from_secs(1));
    };
    later.await;
    let _ = ctx.id();
    Ok(total)
}

fn main() {
    fn steps<I: IntoWorkflow>(_: I) -> Vec<&'static str> {
        <I::Workflow as Workflow>::SITES.iter().map(|s| s.name).collect()
    }
    assert_eq!(
        steps(onboarding),
        [
            "create-draft",
            "manager-approval",
            "other-event",
            "cool-off",
            "launch"
        ]
    );
    assert_eq!(
        steps(shapes),
        [
            "joined-approval",
            "joined-nap",
            "joined-step",
            "joined-timeout",
            "joined-plain",
            "approved-nap",
            "rejected-until",
            "reminder-interval",
            "reminder-ack",
            "poll",
            "printed",
            "printed-nap",
            "in-async-block",
        ]
    );
}
