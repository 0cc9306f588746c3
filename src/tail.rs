//! `kavach-stream tail`: follows a stream in the terminal, one line per event (coloured on a
//! terminal) or one JSON object per line, and reconnects by itself with `Last-Event-ID`, saying so
//! on stderr. An authentication error ends it: retrying a refused token cannot help.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::cli::TailArgs;
use crate::client::{SseItem, SseMessage, SseRequest};

/// The longest pause between reconnects, whatever the server's `retry:` says.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Follows the stream until Ctrl-C or a terminal error.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let url = stream_url(&args)?;
    let colour = !args.json && std::io::stdout().is_terminal();
    let mut last_event_id: Option<String> = None;
    let mut retry = Duration::from_secs(2);

    loop {
        let ended = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            ended = follow(&url, &args, colour, &mut last_event_id, &mut retry) => ended,
        };
        let reason = match ended {
            Ok(Ending::Refused(message)) => anyhow::bail!(message),
            Ok(Ending::Closed) => "the server closed the stream".to_owned(),
            Err(error) => format!("{error:#}"),
        };
        let resume = last_event_id
            .as_deref()
            .map_or(String::new(), |id| format!(", resuming after {id}"));
        eprintln!(
            "tail: {reason}; reconnecting in {} ms{resume}",
            retry.as_millis()
        );
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

enum Ending {
    Closed,
    Refused(String),
}

fn stream_url(args: &TailArgs) -> anyhow::Result<String> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(types) = &args.types {
        query.append_pair("types", types);
    }
    if let Some(since) = &args.since {
        query.append_pair("since", since);
    }
    let query = query.finish();
    let separator = if args.url.contains('?') { '&' } else { '?' };
    let url = if query.is_empty() {
        args.url.clone()
    } else {
        format!("{}{separator}{query}", args.url)
    };
    SseRequest::new(&url).with_context(|| format!("invalid --url {}", args.url))?;
    Ok(url)
}

/// One connection: prints events until the stream ends.
async fn follow(
    url: &str,
    args: &TailArgs,
    colour: bool,
    last_event_id: &mut Option<String>,
    retry: &mut Duration,
) -> anyhow::Result<Ending> {
    let mut request = SseRequest::new(url)?;
    if let Some(token) = &args.token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    if let Some(id) = last_event_id.as_deref() {
        request = request.header("last-event-id", id);
    }
    let mut response = request.send().await?;
    if response.status() != 200 {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status == 400 || status == 401 || status == 403 {
            return Ok(Ending::Refused(format!(
                "the server refused the request ({status}): {}",
                body.trim()
            )));
        }
        anyhow::bail!("the server answered {status}: {}", body.trim());
    }

    let mut stdout = std::io::stdout().lock();
    while let Some(item) = response.next().await? {
        let SseItem::Message(message) = item else {
            continue;
        };
        if let Some(millis) = message.retry {
            *retry = Duration::from_millis(millis).min(MAX_RETRY);
        }
        match (message.id.as_deref(), message.event.as_str()) {
            (Some(id), _) => {
                writeln!(stdout, "{}", render(&message, args.json, colour))?;
                stdout.flush()?;
                *last_event_id = Some(id.to_owned());
            }
            (None, "error") => {
                let data: Value = serde_json::from_str(&message.data).unwrap_or(Value::Null);
                let code = data["code"].as_str().unwrap_or("ERROR");
                let text = data["message"]
                    .as_str()
                    .unwrap_or("the server sent an error");
                if code == "UNAUTHORIZED" {
                    return Ok(Ending::Refused(format!("{code}: {text}")));
                }
                eprintln!("tail: server error {code}: {text}");
            }
            (None, "gap") => eprintln!("tail: continuity broke: {}", message.data),
            (None, "connected") => eprintln!("tail: connected {}", message.data),
            _ => {}
        }
    }
    Ok(Ending::Closed)
}

/// One event as a line: the JSON as sent, or `time  type  agent user  data`.
fn render(message: &SseMessage, json: bool, colour: bool) -> String {
    if json {
        return message.data.clone();
    }
    let event: Value = serde_json::from_str(&message.data).unwrap_or(Value::Null);
    let text = |key: &str| event[key].as_str().unwrap_or("-").to_owned();
    let event_type = text("type");
    let shown_type = if colour {
        format!("\x1b[{}m{event_type:<20}\x1b[0m", colour_of(&event_type))
    } else {
        format!("{event_type:<20}")
    };
    format!(
        "{}  {shown_type}  agent={} user={}  {}",
        text("timestamp"),
        text("agentId"),
        text("userId"),
        event["data"]
    )
}

/// ANSI colour by event family.
fn colour_of(event_type: &str) -> &'static str {
    match event_type.split('.').next().unwrap_or("") {
        "anomaly" => "1;31",
        "budget" | "cost" => "33",
        "auth" => "36",
        "agent" => "32",
        "delegation" => "35",
        _ => "37",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &str) -> SseMessage {
        SseMessage {
            id: Some("1-1".into()),
            event: "auth.failed".into(),
            data: data.into(),
            retry: None,
        }
    }

    #[test]
    fn json_mode_prints_the_event_as_sent() {
        let data = r#"{"id":"x","type":"auth.failed","timestamp":"t","data":{}}"#;

        assert_eq!(render(&message(data), true, false), data);
    }

    #[test]
    fn text_mode_prints_one_readable_line() {
        let data = r#"{"id":"x","type":"auth.failed","timestamp":"2026-01-15T10:00:00.000000Z","data":{"reason":"locked"},"userId":"bob"}"#;

        let line = render(&message(data), false, false);

        assert_eq!(
            line,
            r#"2026-01-15T10:00:00.000000Z  auth.failed           agent=- user=bob  {"reason":"locked"}"#
        );
    }
}
