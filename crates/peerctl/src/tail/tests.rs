//! The fast formatter against the one it replaced ([`reference`], kept
//! here verbatim): every byte value, every short invalid UTF-8 sequence
//! and random entries must come out byte for byte the same, in all three
//! formats, whatever order the times come in.
//!
//! Test code only: `tail.rs` includes this file as `#[cfg(test)] mod tests;`,
//! so its `unwrap`s never reach `peerctl`.

use proptest::prelude::*;

use peerlink::control::{Entry, EntryRef};

use super::*;

/// The formatter as it was before the fast paths (one `String` per line,
/// `format!`, the body escaped char by char). Do not "improve" it: it is
/// the definition the fast one is checked against.
mod reference {
    use super::super::origin_style;
    use peerlink::control::Entry;

    const TIME: anstyle::Style = anstyle::Style::new().dimmed();

    fn time(ms: u64) -> String {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        humantime::format_rfc3339_millis(t).to_string()
    }

    pub fn text_line(e: &Entry) -> String {
        format!(
            "{} {} {}",
            time(e.received_ms),
            e.origin,
            shown_body(&e.body)
        )
    }

    pub fn styled_line(e: &Entry) -> String {
        let o = origin_style(&e.origin);
        format!(
            "{TIME}{}{TIME:#} {o}{}{o:#} {}",
            time(e.received_ms),
            e.origin,
            shown_body(&e.body)
        )
    }

    pub fn shown_body(body: &[u8]) -> String {
        let body = String::from_utf8_lossy(body);
        let mut shown = String::with_capacity(body.len());
        for c in body.chars() {
            match c {
                '\n' => shown.push_str("\\n"),
                '\r' => shown.push_str("\\r"),
                '\\' => shown.push_str("\\\\"),
                c if c.is_control() && c != '\t' => shown.push_str(&c.escape_unicode().to_string()),
                c => shown.push(c),
            }
        }
        shown
    }

    #[derive(serde::Serialize)]
    struct EntryJson<'a> {
        seq: u64,
        received: String,
        received_ms: u64,
        sent_ms: u64,
        origin: &'a str,
        origin_seq: u64,
        body: std::borrow::Cow<'a, str>,
    }

    pub fn json_line(e: &Entry) -> String {
        let v = EntryJson {
            seq: e.seq,
            received: time(e.received_ms),
            received_ms: e.received_ms,
            sent_ms: e.sent_ms,
            origin: &e.origin,
            origin_seq: e.origin_seq,
            body: String::from_utf8_lossy(&e.body),
        };
        serde_json::to_string(&v).unwrap_or_default()
    }
}

fn entry(received_ms: u64, origin: &str, body: &[u8]) -> Entry {
    Entry {
        seq: 7,
        received_ms,
        sent_ms: received_ms.saturating_sub(3),
        origin: origin.into(),
        origin_seq: 9,
        body: body.to_vec(),
    }
}

/// What the reference prints for these entries in `format`, every line
/// with its newline.
fn reference_output(format: Format, entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let line = match format {
            Format::Text => reference::text_line(e),
            Format::Styled => reference::styled_line(e),
            Format::Json => reference::json_line(e),
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The same through one [`Printer`], reused across the entries as `tail`
/// does.
fn fast_output(format: Format, entries: &[Entry]) -> Vec<u8> {
    let mut p = Printer::new(format);
    for e in entries {
        p.push(&EntryRef::from(e));
    }
    p.as_bytes().to_vec()
}

fn assert_same(entries: &[Entry]) {
    for format in [Format::Text, Format::Styled, Format::Json] {
        let want = reference_output(format, entries);
        let got = fast_output(format, entries);
        assert!(
            got == want,
            "{format:?} differs for {entries:?}:\n got {:?}\nwant {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
    }
}

/// Compare the body escaping alone for many bodies at once (cheaper than
/// whole lines, for the exhaustive sweeps).
fn assert_bodies_same(bodies: impl Iterator<Item = Vec<u8>>) {
    let mut buf = Vec::new();
    for body in bodies {
        buf.clear();
        push_shown_body(&mut buf, &body);
        let want = reference::shown_body(&body);
        assert!(
            buf == want.as_bytes(),
            "{body:02x?}: got {:?}, want {want:?}",
            String::from_utf8_lossy(&buf)
        );
    }
}

#[test]
fn every_byte_value_alone_and_in_text() {
    assert_bodies_same((0..=255u8).flat_map(|b| {
        [
            vec![b],
            vec![b'a', b, b'z'],
            vec![b, b],
            [b"plain text ".as_slice(), &[b]].concat(),
        ]
    }));
    // And as whole lines in every format.
    let entries: Vec<Entry> = (0..=255u8)
        .map(|b| entry(1_700_000_000_123, "b", &[b'<', b, b'>']))
        .collect();
    assert_same(&entries);
    // Every ASCII character in an origin, too (JSON escapes it; text
    // shows it as the daemon gave it).
    let entries: Vec<Entry> = (0..0x80u8)
        .map(|b| entry(u64::MAX / 1_000_000, &format!("o{}", b as char), b"x"))
        .collect();
    assert_same(&entries);
}

#[test]
fn every_two_byte_sequence() {
    assert_bodies_same((0..=0xffffu32).map(|v| vec![(v >> 8) as u8, v as u8]));
}

#[test]
fn every_three_byte_sequence_after_a_multibyte_lead() {
    // Leads of 3- and 4-byte sequences (and the invalid 0xf5..), each with
    // a continuation byte, then every byte value: valid characters,
    // surrogates, overlongs, truncations.
    assert_bodies_same((0xe0..=0xffu8).flat_map(|lead| {
        (0x80..=0xbfu8).flat_map(move |c1| (0..=255u8).map(move |c2| vec![lead, c1, c2, b'x']))
    }));
}

#[test]
fn known_escapes() {
    assert_eq!(shown_body(b"\x1b[2J"), "\\u{1b}[2J");
    assert_eq!(shown_body(b"a\nb\rc\\d\te"), "a\\nb\\rc\\\\d\te");
    assert_eq!(shown_body(b"\x00\x7f"), "\\u{0}\\u{7f}");
    assert_eq!(
        shown_body("\u{85}\u{9f}\u{a0}é".as_bytes()),
        "\\u{85}\\u{9f}\u{a0}é"
    );
    assert_eq!(shown_body(b"\xff\xfe"), "\u{FFFD}\u{FFFD}");
    assert_eq!(shown_body(b"\xe2\x82"), "\u{FFFD}");
}

#[test]
fn one_message_one_line() {
    let e = entry(0, "b", b"two\nlines\\");
    let r = EntryRef::from(&e);
    assert_eq!(text_line(&r), "1970-01-01T00:00:00.000Z b two\\nlines\\\\");
    assert!(json_line(&r).starts_with("{\"seq\":7,\"received\":\"1970-01-01T00:00:00.000Z\""));
    let v: serde_json::Value = serde_json::from_str(&json_line(&r)).unwrap();
    assert_eq!(v["body"], "two\nlines\\");
    assert_eq!(v["origin"], "b");
    assert_eq!(
        anstream::adapter::strip_str(&styled_line(&r)).to_string(),
        text_line(&r)
    );
}

#[test]
fn times_across_days_years_and_leap_days() {
    // Day and year boundaries, leap days (2000 is a leap year, 2100 not),
    // the last ms RFC 3339 can show; in an order that hits the reuse of
    // the same ms, the same day, and a return to an earlier day.
    let day = MS_PER_DAY;
    let mut times = vec![0, 0, 1, 999, 1000, day - 1, day, day + 1, day - 1];
    for base in [
        951_782_400_000u64, // 2000-02-29
        4_107_542_400_000,  // 2100-02-28
        1_704_067_200_000,  // 2024-01-01
        MS_END - day,
    ] {
        for d in [0, 1, 2, 365, 366] {
            for off in [0, 1, 59_999, 3_599_999, day - 1] {
                let t = base + d * day + off;
                if t < MS_END {
                    times.push(t);
                    times.push(t);
                }
            }
        }
    }
    times.push(MS_END - 1);
    let entries: Vec<Entry> = times.iter().map(|&t| entry(t, "a", b"x")).collect();
    assert_same(&entries);
}

#[test]
fn colours_of_peers_and_plain_clients() {
    assert_same(&[
        entry(5, "client:127.0.0.1:1", b"x"),
        entry(5, "b", b"y"),
        entry(6, "client:", b""),
        entry(6, "clientx", b"z"),
    ]);
}

/// Bodies that hit the interesting paths: any bytes, mostly-ASCII text
/// with specials, and text with non-ASCII characters and broken sequences.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        proptest::collection::vec(
            prop_oneof![
                8 => 0x20u8..0x7f,
                1 => Just(b'\\'),
                1 => Just(b'\n'),
                1 => 0u8..0x20,
                1 => 0x80u8..=0xff,
            ],
            0..120
        ),
        proptest::collection::vec(
            prop_oneof![
                any::<char>().prop_map(|c| c.to_string().into_bytes()),
                (0x80u32..0xa0)
                    .prop_map(|c| char::from_u32(c).unwrap_or('x').to_string().into_bytes()),
                proptest::collection::vec(0x80u8..=0xff, 1..4),
                "[ -~]{0,8}".prop_map(String::into_bytes),
            ],
            0..20
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    // Times near one another (same ms, same day, next day) or anywhere up
    // to the year 9999.
    let time = prop_oneof![
        1_700_000_000_000u64..1_700_000_000_000 + 3 * MS_PER_DAY,
        0..MS_END,
    ];
    let origin = prop_oneof![
        Just("b".to_string()),
        "client:127\\.0\\.0\\.1:[0-9]{1,5}",
        any::<String>(),
    ];
    proptest::collection::vec(
        (
            any::<u64>(),
            time,
            any::<u64>(),
            origin,
            any::<u64>(),
            body(),
        ),
        1..12,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(
                |(seq, received_ms, sent_ms, origin, origin_seq, body)| Entry {
                    seq,
                    received_ms,
                    sent_ms,
                    origin,
                    origin_seq,
                    body,
                },
            )
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn bodies_escape_as_before(body in body()) {
        let mut got = Vec::new();
        push_shown_body(&mut got, &body);
        prop_assert_eq!(String::from_utf8(got).ok(), Some(reference::shown_body(&body)));
    }

    #[test]
    fn lines_are_byte_identical_to_before(entries in entries()) {
        for format in [Format::Text, Format::Styled, Format::Json] {
            prop_assert_eq!(
                fast_output(format, &entries),
                reference_output(format, &entries),
                "{:?}", format
            );
        }
    }

    #[test]
    fn batches_read_in_place_print_the_same(entries in entries()) {
        // As `tail` gets them: a whole `Entries` frame read in place.
        let frame = peerlink::codec::encode(
            &peerlink::control::Response::Entries(entries.clone()),
        ).unwrap();
        let view = peerlink::control::entries_view(&frame).unwrap().unwrap();
        for format in [Format::Text, Format::Json] {
            let mut p = Printer::new(format);
            for e in &view {
                p.push(e);
            }
            prop_assert_eq!(p.as_bytes(), &reference_output(format, &entries)[..]);
        }
    }
}

#[test]
fn write_out_empties_the_buffer() {
    let mut p = Printer::new(Format::Text);
    let e = entry(0, "b", b"hi");
    p.push(&EntryRef::from(&e));
    let mut out = Vec::new();
    p.write_to(&mut out).unwrap();
    assert!(p.is_empty());
    assert_eq!(out, b"1970-01-01T00:00:00.000Z b hi\n");
}
