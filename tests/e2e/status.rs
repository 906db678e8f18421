//! `peerctl status`: the documented `--json` schema and the exit codes
//! that tell up (0) from down (4) from unreachable (3).

use std::time::Duration;

use peerlink_e2e::{EXIT_DOWN, EXIT_UNREACHABLE, Pair, Value};

const LONG: Duration = Duration::from_secs(20);

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_u64() => "uint",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every documented field (README "status --json"), with its JSON type;
/// `|` separates the types a field may have.
const TOP: &[(&str, &str)] = &[
    ("schema", "uint"),
    ("instance", "string"),
    ("node", "string"),
    ("version", "string"),
    ("pid", "uint"),
    ("started_ms", "uint"),
    ("now_ms", "uint"),
    ("uptime_ms", "uint"),
    ("listen", "string"),
    ("socket", "string"),
    ("state_dir", "string"),
    ("all_up", "bool"),
    ("journal", "object"),
    ("peers", "array"),
    ("last_reload", "object|null"),
];
const JOURNAL: &[(&str, &str)] = &[
    ("durable", "bool"),
    ("epoch", "string"),
    ("outbox_next", "uint"),
    ("inbox_first", "uint"),
    ("inbox_next", "uint"),
    ("storage_error", "string|null"),
    ("storage_error_ms", "uint|null"),
];
const PEER: &[(&str, &str)] = &[
    ("name", "string"),
    ("url", "string"),
    ("state", "string"),
    ("direction", "string|null"),
    ("remote_addr", "string|null"),
    ("local_addr", "string|null"),
    ("connected_since_ms", "uint|null"),
    ("last_handshake_ms", "uint|null"),
    ("rtt_us", "uint|null"),
    ("next_attempt_ms", "uint|null"),
    ("msgs_sent", "uint"),
    ("bytes_sent", "uint"),
    ("msgs_received", "uint"),
    ("bytes_received", "uint"),
    ("queued_msgs", "uint"),
    ("queued_bytes", "uint"),
    ("oldest_queued_ms", "uint|null"),
    ("reconnects", "uint"),
    ("msgs_lost", "uint"),
    ("msgs_lost_since_start", "uint"),
    ("peer_max_message", "uint|null"),
    ("held", "string|null"),
    ("last_error", "string|null"),
    ("last_error_ms", "uint|null"),
    ("key_id", "string|null"),
    ("key_added_ms", "uint|null"),
];

fn check_fields(v: &Value, fields: &[(&str, &str)], what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} is an object"));
    for (name, types) in fields {
        let got = obj
            .get(*name)
            .unwrap_or_else(|| panic!("{what} has no {name}: {v}"));
        assert!(
            types.split('|').any(|t| t == kind(got)),
            "{what}.{name} is {} ({got}), documented as {types}",
            kind(got)
        );
    }
    let undocumented: Vec<&String> = obj
        .keys()
        .filter(|k| !fields.iter().any(|(n, _)| n == k))
        .collect();
    assert!(
        undocumented.is_empty(),
        "{what} has undocumented fields {undocumented:?}"
    );
}

#[test]
fn status_json_holds_the_documented_fields_and_exit_codes_tell_up_down_unreachable() {
    let pair = Pair::new("");
    let (mut a, mut b) = pair.start_linked();
    a.send(&["one"]);
    b.wait(LONG, "b has a's message", |b| b.bodies() == ["one"]);

    // Up: exit 0.
    let out = pair.a.ctl(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    check_fields(&v, TOP, "status");
    check_fields(&v["journal"], JOURNAL, "journal");
    assert_eq!(v["schema"], 1);
    assert_eq!(v["instance"], "a");
    assert_eq!(v["all_up"], true);
    assert_eq!(v["pid"], a.pid());
    assert!(v["uptime_ms"].as_u64() <= Some(v["now_ms"].as_u64().unwrap_or(0)));
    let epoch = v["journal"]["epoch"].as_str().unwrap_or_default();
    assert!(
        epoch.len() == 16 && epoch.chars().all(|c| c.is_ascii_hexdigit()),
        "{epoch}"
    );
    let peers = v["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 1);
    let p = &peers[0];
    check_fields(p, PEER, "peer");
    assert_eq!(p["name"], "b");
    assert_eq!(p["state"], "connected");
    assert!(
        p["direction"] == "outbound" || p["direction"] == "inbound",
        "{p}"
    );
    assert_eq!(p["msgs_sent"], 1);
    assert_eq!(p["bytes_sent"], 3);

    // The human view on a pipe: aligned, plain.
    let out = pair.a.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\x1b'), "no colour on a pipe: {text:?}");
    assert!(text.starts_with("peerd a (node a, peerlink "), "{text}");
    assert!(text.contains("\npeer b: connected\n"), "{text}");
    assert!(text.contains("1 msg (3 B) sent"), "{text}");

    // A link down: exit 4, and the JSON says which and why.
    b.kill();
    a.wait(LONG, "a sees b gone", |a| {
        a.peer("b")["state"] != "connected"
    });
    let out = pair.a.ctl(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(EXIT_DOWN));
    let v = json(&out);
    assert_eq!(v["all_up"], false);
    let p = &v["peers"][0];
    check_fields(p, PEER, "peer");
    assert!(p["state"] == "connecting" || p["state"] == "backoff", "{p}");
    assert!(p["last_error"].is_string(), "{p}");
    assert_eq!(
        pair.a.ctl(&["status"]).status.code(),
        Some(EXIT_DOWN),
        "the human view exits the same"
    );

    // Daemon unreachable: exit 3.
    a.kill();
    for args in [&["status"][..], &["status", "--json"]] {
        let out = pair.a.ctl(args);
        assert_eq!(out.status.code(), Some(EXIT_UNREACHABLE), "{args:?}");
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout for a script to misread"
        );
    }
}
