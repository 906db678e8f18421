//! The browser console (README "Browser console"): who may open it and
//! what it does, in a real headless Chromium driven through the DevTools
//! protocol, and byte by byte for the refusals. The Chromium part says
//! `SKIPPED:` where Chromium is not installed (`.ci/run` installs it).

use std::io::Write;
use std::time::{Duration, Instant};

use peerlink_e2e::browser::{self, Browser, PageServer};
use peerlink_e2e::http::{self, UPGRADE};
use peerlink_e2e::{Daemon, Follower, Pair, Sandbox, wait_until};

const LONG: Duration = Duration::from_secs(30);
const HTTP: &str = "http_listen = \"127.0.0.1:0\"\n";

/// A pair (with `extra` keys on both) where only a has the HTTP listener.
fn pair_with_console(extra: &str) -> Pair {
    let pair = Pair::new(extra);
    let a = Sandbox::config(
        "a",
        pair.a_port,
        &[("b", pair.b_port)],
        &format!("{HTTP}{extra}"),
    );
    std::fs::write(&pair.a.config, a).expect("rewrite a's config");
    pair
}

/// The address a's HTTP listener took (port 0 in the config).
fn http_addr(a: &Daemon) -> String {
    a.status()["http_listen"]
        .as_str()
        .expect("status --json has http_listen")
        .to_string()
}

/// A fresh one-time console URL from `peerctl console`.
fn console_url(pair: &Pair) -> String {
    let out = pair.a.ctl(&["console"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Redeem a token without a browser: the session cookie (`name=value`).
fn session_cookie(pair: &Pair, addr: &str) -> String {
    let url = console_url(pair);
    let path = url.split_once(addr).map(|(_, p)| p).unwrap_or_default();
    let r = http::get(addr, path, &[]);
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("Location"), Some("/"));
    let cookie = r.header("Set-Cookie").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap_or_default().to_string()
}

#[test]
fn the_console_and_its_websocket_refuse_requests_without_a_token_or_from_other_origins() {
    let pair = pair_with_console("");
    let (a, _b) = pair.start_linked();
    let addr = http_addr(&a);

    // No token, a made-up one: the page is refused and says what to do.
    for path in ["/", "/?token=0123", "/?token="] {
        let r = http::get(&addr, path, &[]);
        assert_eq!(r.status, 403, "{path}: {r:?}");
        assert!(r.body.contains("peerctl console"), "{path}: {}", r.body);
    }
    let r = http::get(&addr, "/ws", UPGRADE);
    assert_eq!(r.status, 403, "WebSocket without a session: {r:?}");

    // A token works once.
    let url = console_url(&pair);
    assert!(
        url.starts_with(&format!("http://{addr}/?token=")) && url.len() > 80,
        "{url}"
    );
    let path = url.split_once(&addr).map(|(_, p)| p).unwrap_or_default();
    assert_eq!(http::get(&addr, path, &[]).status, 303);
    let again = http::get(&addr, path, &[]);
    assert_eq!(again.status, 403, "a token used twice: {again:?}");
    assert!(again.body.contains("used already"), "{}", again.body);

    // With a session: the page and its WebSocket, from the page's own
    // origin (and from a program, which sends no Origin).
    let cookie = session_cookie(&pair, &addr);
    let own = format!("http://{addr}");
    let page = http::get(&addr, "/", &[("Cookie", &cookie)]);
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("<title>peerd console</title>"));
    let mut ws = UPGRADE.to_vec();
    ws.push(("Cookie", &cookie));
    ws.push(("Origin", &own));
    assert_eq!(http::get(&addr, "/ws", &ws).status, 101);

    // The same session from another origin, or under a foreign Host (DNS
    // rebinding): refused before anything is served, one log line each.
    for (name, value) in [
        ("Origin", "http://evil.example"),
        ("Origin", "http://127.0.0.2:8000"),
        ("Host", "evil.example:9180"),
    ] {
        let mut headers = vec![("Cookie", cookie.as_str()), (name, value)];
        let r = http::get(&addr, "/", &headers);
        assert_eq!(r.status, 403, "page, {name}: {value}: {r:?}");
        headers.extend_from_slice(UPGRADE);
        let r = http::get(&addr, "/ws", &headers);
        assert_eq!(r.status, 403, "WebSocket, {name}: {value}: {r:?}");
    }
    a.wait(LONG, "the refusals logged", |a| {
        let log = a.spec.log();
        log.contains("Origin \"http://evil.example\" is not in allowed_origins")
            && log.contains("Host \"evil.example:9180\"")
    });

    // /metrics needs no token.
    let m = http::get(&addr, "/metrics", &[]);
    assert_eq!(m.status, 200);
    assert!(m.body.contains("peerd_link_up{peer=\"b\"} 1"), "{}", m.body);

    // Off unless configured: peerctl console says how to turn it on.
    let out = pair.b.ctl(&["console"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http_listen"), "{err}");
}

#[test]
fn the_console_in_a_real_browser_shows_the_link_sends_and_receives() {
    let Some(chromium) = browser::chromium() else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: console::the_console_in_a_real_browser_shows_the_link_sends_and_receives: chromium not installed (apt-get install chromium)"
        );
        return;
    };
    let pair = pair_with_console("max_message = \"1KiB\"\n");
    let (a, b) = pair.start_linked();
    a.send(&["sent before the page opened"]);
    b.wait(LONG, "b has it", |b| b.bodies().len() == 1);
    b.send(&["b said this before"]);
    a.wait(LONG, "a has it", |a| a.bodies().len() == 1);
    let addr = http_addr(&a);
    let url = console_url(&pair);
    // The README's sample has the same form (its port and token aside).
    let sample = peerlink_e2e::readme_block("console-url");
    let shape = |u: &str| {
        let (base, token) = u.split_once("/?token=").unwrap_or((u, ""));
        let port_free = base.rsplit_once(':').map_or(base, |(h, _)| h).to_string();
        (port_free, !token.is_empty())
    };
    assert_eq!(
        sample.first().map(String::as_str),
        Some("$ peerctl console")
    );
    assert_eq!(
        shape(sample.get(1).map_or("", String::as_str)),
        shape(&url),
        "README's `peerctl console` sample and {url}"
    );

    let tab = Browser::open_driven(&chromium, "about:blank");
    let mut cdp = tab.devtools();
    cdp.navigate(&url);
    // The token leaves the address bar; the page shows b connected, live.
    let mut seen = serde_json::Value::Null;
    let shown = |cdp: &mut browser::Cdp, seen: &mut serde_json::Value| {
        *seen = cdp.eval(
            "JSON.stringify({conn: document.getElementById('conn').dataset.state, \
             b: document.querySelector('.peer[data-peer=\"b\"]')?.dataset.state, \
             href: location.href, \
             feed: [...document.querySelectorAll('#feed .body')].map(e => e.textContent)})",
        );
        serde_json::from_str::<serde_json::Value>(seen.as_str().unwrap_or("{}")).unwrap_or_default()
    };
    let deadline = Instant::now() + LONG;
    loop {
        let v = shown(&mut cdp, &mut seen);
        if v["conn"] == "open" && v["b"] == "connected" {
            assert_eq!(v["href"], format!("http://{addr}/"), "the token is gone");
            assert_eq!(v["feed"], serde_json::json!(["b said this before"]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed b connected: {seen}\n{}",
            tab.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A message typed in the page arrives in b's tail.
    let tail = Follower::start(&pair.b, &["-n", "0"]);
    cdp.eval("document.getElementById('message').focus()");
    cdp.type_text("typed in the browser");
    cdp.enter();
    let got = tail.next(LONG).expect("b's tail shows the typed message");
    assert_eq!(got["body"], "typed in the browser", "{got}");
    assert_eq!(got["origin"], "a");
    wait_until(LONG, "the page says it was stored", || {
        cdp.eval("document.getElementById('send-result').textContent")
            .as_str()
            .is_some_and(|t| t.starts_with("stored as #2"))
    });

    // Picked in the `to` selector: for b only (peerctl send --to b).
    let peers = cdp.eval("[...document.getElementById('to').options].map(o => o.value)");
    assert_eq!(peers, serde_json::json!(["", "b"]));
    cdp.eval(
        "document.getElementById('to').value = 'b'; document.getElementById('message').focus()",
    );
    cdp.type_text("for b only");
    cdp.enter();
    let got = tail
        .next(LONG)
        .expect("b's tail shows the addressed message");
    assert_eq!(got["body"], "for b only", "{got}");
    cdp.eval("document.getElementById('to').value = ''");

    // A message from the peer appears in the page within a second.
    b.send(&["from b, live"]);
    let sent = Instant::now();
    loop {
        let v = shown(&mut cdp, &mut seen);
        if v["feed"]
            .as_array()
            .is_some_and(|f| f.iter().any(|e| e == "from b, live"))
        {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "b's message not in the page within a second: {seen}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Refused sends show their reason in the page.
    cdp.eval("document.getElementById('message').focus()");
    cdp.type_text(&"x".repeat(2000));
    cdp.enter();
    wait_until(LONG, "the page shows the refusal", || {
        cdp.eval("document.getElementById('send-result').textContent")
            .as_str()
            .is_some_and(|t| t.contains("max_message"))
    });
    // Counted like any refused send.
    let m = http::get(&addr, "/metrics", &[]).body;
    assert!(
        m.contains("peerd_refused_sends_total{reason=\"too_large\"} 1\n"),
        "{m}"
    );
    assert_eq!(a.status()["refused_sends"]["too_large"], 1);
    cdp.eval("document.getElementById('send-result').textContent = ''");
    // The link's counters follow: 3 sent to b, 2 received from it.
    let mut card = String::new();
    let deadline = Instant::now() + LONG;
    while !(card.contains("sent 3 (") && card.contains("received 2 (")) {
        assert!(
            Instant::now() < deadline,
            "the page's counters never caught up: {card:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        let v = cdp.eval("document.querySelector('.peer[data-peer=\"b\"]').innerText");
        card = v.as_str().unwrap_or_default().replace(['\t', '\n'], " ");
    }
    // Screenshot for people (target/test-artifacts/console.png).
    let png = cdp.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("console.png"), &png);

    // The same browser, its cookies gone: the page is refused.
    cdp.call("Network.clearBrowserCookies", serde_json::json!({}));
    cdp.navigate(&format!("http://{addr}/"));
    let text = cdp.eval("document.body.innerText");
    assert!(
        text.as_str().is_some_and(|t| t.contains("peerctl console")),
        "{text}"
    );
    assert_eq!(
        cdp.eval("document.getElementById('feed')"),
        serde_json::Value::Null
    );

    // A page of another origin, in a browser holding a valid session,
    // cannot open the console's WebSocket.
    cdp.navigate(&console_url(&pair));
    wait_until(LONG, "logged in again", || {
        cdp.eval("document.getElementById('conn').dataset.state") == "open"
    });
    let mut other = PageServer::start(format!(
        r#"<!doctype html><title>elsewhere</title><script>
const report = (w) => fetch('/report?' + encodeURIComponent(w));
let opened = false;
const ws = new WebSocket('ws://{addr}/ws');
ws.onopen = () => {{ opened = true; report('open'); }};
ws.onmessage = (m) => report('message:' + m.data.slice(0, 40));
ws.onclose = (e) => report('close:' + e.code + ':opened=' + opened);
</script>"#
    ));
    cdp.navigate(&other.url());
    let end = other.wait_for(
        LONG,
        "the socket closing",
        || tab.log(),
        |r| r.starts_with("close:"),
    );
    assert_eq!(end, "close:1006:opened=false", "{:?}", other.seen);
    a.wait(LONG, "the foreign origin logged", |a| {
        a.spec.log().contains(&format!(
            "http /ws: refused a WebSocket upgrade from a web page: Origin \"{}\"",
            other.origin
        ))
    });
    assert_eq!(
        b.bodies(),
        [
            "sent before the page opened",
            "typed in the browser",
            "for b only"
        ]
    );
}
