//! The demo's traffic: a steady, realistic mix of all twelve event types, written half through
//! the Rust API (`emit`) and half through plain SQL, so the dashboard and any client have
//! something real to watch. It opens with one event of each type.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::event::{NewEvent, KNOWN_TYPES};
use crate::stream::EventStream;

/// Pause between scenes.
const PACE: Duration = Duration::from_millis(250);

/// A small deterministic generator: the demo needs variety, not security.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.roll(items.len() as u64) as usize]
    }
}

/// Writes traffic until `stop` is cancelled.
pub async fn run_traffic(stream: EventStream, stop: CancellationToken) {
    let mut dice = Dice(0x2545_f491_4f6c_dd1d);
    let mut written = 0u64;

    for event_type in KNOWN_TYPES {
        write(&stream, &mut written, scene_event(event_type, &mut dice)).await;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PACE) => {}
        }
        for event in scene(&mut dice) {
            write(&stream, &mut written, event).await;
        }
    }
}

/// One moment in the life of a deployment: one to five related events.
fn scene(dice: &mut Dice) -> Vec<NewEvent> {
    let kinds: &[&str] = match dice.roll(20) {
        0 => &[
            "anomaly.detected",
            "anomaly.detected",
            "anomaly.detected",
            "auth.failed",
            "agent.revoked",
        ],
        1 => &["budget.exceeded"],
        2..=4 => &["agent.created", "delegation.created"],
        5 => &["agent.rotated"],
        6 => &["delegation.revoked", "agent.revoked"],
        7..=9 => &["auth.signin", "audit"],
        10 => &["auth.signout"],
        11 | 12 => &["auth.failed"],
        _ => &["cost.recorded", "audit"],
    };
    kinds.iter().map(|kind| scene_event(kind, dice)).collect()
}

fn scene_event(event_type: &str, dice: &mut Dice) -> NewEvent {
    let agent = format!("agent-{}", dice.roll(12) + 1);
    let user = dice
        .pick(&["alice", "bob", "carol", "dave", "erin"])
        .to_owned();
    let data: Value = match event_type {
        "agent.created" => {
            json!({ "agentId": agent, "name": dice.pick(&["deploy-bot", "billing-sync", "triage", "crawler"]) })
        }
        "agent.revoked" => {
            json!({ "agentId": agent, "reason": dice.pick(&["manual-revocation", "anomaly", "expired"]) })
        }
        "agent.rotated" => json!({ "agentId": agent, "previousKeyAgeDays": dice.roll(90) }),
        "auth.signin" | "auth.signout" => {
            json!({ "userId": user, "ip": format!("10.0.{}.{}", dice.roll(8), dice.roll(250)) })
        }
        "auth.failed" => {
            json!({ "userId": user, "reason": dice.pick(&["bad-password", "mfa-timeout", "locked"]) })
        }
        "delegation.created" | "delegation.revoked" => {
            json!({ "from": user, "to": agent, "scope": dice.pick(&["read:audit", "write:billing", "admin"]) })
        }
        "budget.exceeded" => {
            json!({ "agentId": agent, "budgetUsd": 100, "spentUsd": 100 + dice.roll(40) })
        }
        "anomaly.detected" => {
            json!({ "agentId": agent, "score": 70 + dice.roll(30), "signal": dice.pick(&["burst", "new-geo", "privilege-jump"]) })
        }
        "cost.recorded" => {
            json!({ "agentId": agent, "usd": dice.roll(500) as f64 / 100.0, "model": dice.pick(&["small", "large"]) })
        }
        _ => {
            json!({ "action": dice.pick(&["read", "write", "delete", "export"]), "resource": format!("doc-{}", dice.roll(100)) })
        }
    };
    NewEvent::new(event_type)
        .and_then(|event| event.with_data(data))
        .expect("demo events are well formed")
        .with_agent_id(agent)
        .with_user_id(user)
}

/// Writes through the API and through plain SQL in turn.
async fn write(stream: &EventStream, written: &mut u64, event: NewEvent) {
    *written += 1;
    if written.is_multiple_of(2) {
        if let Err(error) = stream.emit(event) {
            warn!(error = %error, "demo emit refused");
        }
        return;
    }
    let inserted = async {
        let client = stream.pool().get().await?;
        client
            .execute(
                "INSERT INTO kavach_stream_events (type, data, agent_id, user_id) VALUES ($1, $2, $3, $4)",
                &[&event.event_type.as_str(), &event.data, &event.agent_id, &event.user_id],
            )
            .await?;
        Ok::<_, crate::Error>(())
    };
    if let Err(error) = inserted.await {
        warn!(error = %error, "demo SQL insert failed");
    }
}
