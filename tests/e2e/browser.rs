//! What a web page in a real browser can do to a node (README "Security"):
//! headless Chromium (Debian's `chromium`) shows a page served from another
//! origin than b's listener; the page opens `ws://127.0.0.1:<b>/ws`, sends
//! a text as soon as it is open, and reports what happens to the test's
//! page server. Skipped, with one `SKIPPED:` line, where Chromium is not
//! installed (`.ci/run` installs it).

use std::io::Write;
use std::time::Duration;

use peerlink_e2e::browser::{self, Browser, PageServer};
use peerlink_e2e::{Daemon, Pair, Sandbox};

const LONG: Duration = Duration::from_secs(30);
const SENT: &str = "sent by a web page";

/// The page: open b's endpoint, send [`SENT`] once open, report every
/// event (the close with whether it ever opened: reports may arrive out
/// of order).
fn page(b_port: u16) -> String {
    format!(
        r#"<!doctype html>
<title>peerlink origin test</title>
<script>
const report = (what) => fetch('/report?' + encodeURIComponent(what));
let opened = false;
const ws = new WebSocket('ws://127.0.0.1:{b_port}/ws');
ws.onopen = () => {{ opened = true; ws.send('{SENT}'); report('open'); }};
ws.onmessage = (m) => report('message:' + m.data);
ws.onerror = () => report('error');
ws.onclose = (e) => report('close:' + e.code + ':opened=' + opened);
</script>
"#
    )
}

#[test]
fn a_web_page_is_refused_unless_its_origin_is_allowed() {
    let Some(chromium) = browser::chromium() else {
        // Straight to the terminal: the test harness hides what a passing
        // test prints.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: browser::a_web_page_is_refused_unless_its_origin_is_allowed: chromium not installed (apt-get install chromium)"
        );
        return;
    };
    // No secret, as in the zero-config pair: plain clients are welcome.
    let pair = Pair::new("");
    let (a, b) = pair.start_linked();
    a.send(&["before"]);
    b.wait(LONG, "the link delivers", |b| b.bodies() == ["before"]);
    let mut server = PageServer::start(page(pair.b_port));
    let origin = server.origin.clone();

    // A page from another origin: the browser never gets a socket.
    {
        let tab = Browser::open(&chromium, &server.url());
        let end = server.wait_for(
            LONG,
            "the socket closing",
            || tab.log(),
            |r| r.starts_with("close:"),
        );
        assert_eq!(end, "close:1006:opened=false", "{:?}", server.seen);
    }
    let refused = format!("Origin \"{origin}\" is not in allowed_origins");
    b.wait(LONG, "one log line naming the page's origin", |b| {
        b.spec.log().contains(&refused)
    });
    assert_eq!(b.bodies(), ["before"], "the page reached b's inbox");
    let lines = b.spec.log().lines().filter(|l| l.contains(&origin)).count();
    assert_eq!(lines, 1, "{}", b.spec.log());

    // The same page, its origin allowed on purpose: both ways.
    drop(b);
    let allowed = format!("allowed_origins = [\"{origin}\"]\n");
    std::fs::write(
        &pair.b.config,
        Sandbox::config("b", pair.b_port, &[("a", pair.a_port)], &allowed),
    )
    .expect("rewrite b's config");
    let b = Daemon::start(&pair.b);
    b.wait_connected("a");
    server.seen.clear();
    let tab = Browser::open(&chromium, &server.url());
    server.wait_for(LONG, "the socket open", || tab.log(), |r| r == "open");
    b.wait(LONG, "the page's message in b's inbox", |b| {
        b.inbox().iter().any(|e| {
            e["body"] == SENT
                && e["origin"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("client:"))
        })
    });
    a.send(&["from a to the page"]);
    server.wait_for(
        LONG,
        "the message from a",
        || tab.log(),
        |r| r == "message:from a to the page",
    );
    assert_eq!(b.bodies(), ["before", SENT, "from a to the page"]);
}
