//! A transform that attacks its host, selected by the payload's `attack`
//! field. Events without an attack pass through, so tests can check that
//! the next event after an attack is processed normally.

use std::hint::black_box;

use sluice_guest::prelude::*;

/// What to do, from the event payload.
#[derive(Deserialize)]
struct Order {
    #[serde(default)]
    attack: String,
}

/// The transform. Its config may ask `init` itself to misbehave:
/// `{"init": "loop" | "panic" | "sleep"}`. It counts the events its
/// instance has seen (`count` reports it).
pub struct Hostile {
    seen: u64,
}

impl Transform for Hostile {
    type Config = serde_json::Value;

    fn init(config: Self::Config) -> Result<Self, InitError> {
        match config.get("init").and_then(|v| v.as_str()) {
            Some("loop") => loop {
                black_box(&config);
            },
            Some("panic") => panic!("hostile init panics on purpose"),
            Some("sleep") => std::thread::sleep(std::time::Duration::MAX),
            _ => {}
        }
        Ok(Hostile { seen: 0 })
    }

    fn event(&mut self, event: Event) -> Outcome {
        self.seen += 1;
        let order: Order = match event.payload_as() {
            Ok(order) => order,
            Err(violation) => return Outcome::Reject(vec![violation]),
        };
        match order.attack.as_str() {
            "" | "none" => Outcome::pass(&event),
            // More events than the host passes a module in one call.
            "fan-out-wide" => Outcome::Emit(
                (0..200)
                    .map(|n| {
                        let mut child = event.with_payload(&serde_json::json!({"attack": "none", "copy": n}));
                        child.id = format!("{}#{n}", event.id);
                        child
                    })
                    .collect(),
            ),
            "count" => Outcome::emit(&event, &serde_json::json!({"seen": self.seen})),
            // `then-X`: pass on an event whose attack is X, for the next step.
            next if next.starts_with("then-") => Outcome::emit(
                &event,
                &serde_json::json!({"attack": next.trim_start_matches("then-")}),
            ),
            "loop" => loop {
                black_box(&event);
            },
            "alloc-1gib" => {
                let block = vec![1u8; 1 << 30];
                Outcome::emit(&event, &black_box(block).len())
            }
            "panic" => panic!("hostile module panics on purpose for `{}`", event.id),
            "stack-overflow" => Outcome::emit(&event, &recurse(black_box(1))),
            "giant-output" => {
                // Built in place: one 50 MB JSON string, no intermediate copies.
                let mut payload = String::with_capacity(50_000_002);
                payload.push('"');
                payload.extend(std::iter::repeat_n('x', 50_000_000));
                payload.push('"');
                Outcome::Emit(vec![Event { payload, ..event }])
            }
            "read-file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => Outcome::emit(&event, &text),
                Err(err) => panic!("reading /etc/passwd failed: {err}"),
            },
            "open-socket" => match std::net::TcpStream::connect("127.0.0.1:80") {
                Ok(_) => Outcome::emit(&event, "connected"),
                Err(err) => panic!("connecting to 127.0.0.1:80 failed: {err}"),
            },
            // A host call that WASI implements with an async runtime.
            "udp-socket" => {
                let made = wasip2::sockets::udp_create_socket::create_udp_socket(
                    wasip2::sockets::network::IpAddressFamily::Ipv4,
                );
                Outcome::emit(&event, &format!("{:?}", made.map(|_| "made")))
            }
            "probe" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                let dirs = std::fs::read_dir("/")
                    .map(|d| d.count())
                    .map_err(|e| e.to_string());
                let hash = std::collections::hash_map::RandomState::new();
                let random = std::hash::BuildHasher::hash_one(&hash, "seed");
                sluice_guest::log(sluice_guest::LogLevel::Info, "probe ran");
                println!("stdout line from the probe");
                Outcome::emit(
                    &event,
                    &serde_json::json!({
                        "now": now,
                        "env": env,
                        "root_dir": format!("{dirs:?}"),
                        "random": random.to_string(),
                    }),
                )
            }
            "chatty" => {
                for i in 0..5_000 {
                    eprintln!("line {i} of a very chatty module");
                }
                Outcome::pass(&event)
            }
            // Blocking host calls: each would park the host thread without virtual time.
            "sleep-forever" => {
                std::thread::sleep(std::time::Duration::MAX);
                Outcome::pass(&event)
            }
            "sleep-hour" => {
                let start = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Outcome::emit(
                    &event,
                    &serde_json::json!({"slept_secs": start.elapsed().as_secs()}),
                )
            }
            "poll-never" => {
                // An instant that never comes, then wait on it, then on it and stdin together.
                let never = wasip2::clocks::monotonic_clock::subscribe_instant(u64::MAX);
                never.block();
                let stdin = wasip2::cli::stdin::get_stdin();
                let readable = stdin.subscribe();
                let ready = wasip2::io::poll::poll(&[&never, &readable]);
                Outcome::emit(&event, &serde_json::json!({"ready": ready}))
            }
            "busy-poll" => loop {
                let now = wasip2::clocks::monotonic_clock::subscribe_duration(0);
                black_box(wasip2::io::poll::poll(&[&now]));
            },
            "fan-out-million" => Outcome::Emit(vec![
                Event {
                    payload: "{}".into(),
                    ..event
                };
                1_000_000
            ]),
            "giant-source" => Outcome::Emit(vec![Event {
                source: "s".repeat(10 << 20),
                ..event
            }]),
            "log-spam" => {
                let line = "x".repeat(1000);
                for _ in 0..100_000 {
                    sluice_guest::log(sluice_guest::LogLevel::Info, &line);
                }
                panic!("hostile module spammed its log");
            }
            // Nested 10,000 deep: valid JSON that a recursive reader cannot take.
            "deep-output" => Outcome::Emit(vec![Event {
                payload: format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
                ..event
            }]),
            "not-json" => Outcome::Emit(vec![Event {
                payload: "{not json".into(),
                ..event
            }]),
            "drop" => Outcome::skip("dropped on request"),
            "reject" => {
                Outcome::reject_one(&JsonPath::root().key("attack"), "rejected", "rejected on request")
            }
            // A violation path of about 3.6 MB (1.2 million `[0]` steps)
            // that the payload does not have: a page that strips one step
            // at a time and searches for each parent is quadratic in it.
            "huge-path" => Outcome::Reject(vec![Violation {
                path: format!("${}", "[0]".repeat(1_200_000)),
                code: "rejected".into(),
                message: "a path the payload does not have".into(),
            }]),
            // Fan-out: three children; with `fan-out-panic` the second one
            // panics in the next step, with `fan-out-twice` each fans out again.
            "fan-out" | "fan-out-panic" | "fan-out-twice" => Outcome::Emit(
                (0..3)
                    .map(|n| {
                        let next = match order.attack.as_str() {
                            "fan-out-panic" if n == 1 => "panic",
                            "fan-out-twice" => "fan-out",
                            _ => "none",
                        };
                        let mut child = event.with_payload(&serde_json::json!({"attack": next, "copy": n}));
                        child.id = format!("{}#{n}", event.id);
                        child
                    })
                    .collect(),
            ),
            other => Outcome::skip(format!("unknown attack `{other}`")),
        }
    }
}

/// Recurses without end; the frame is kept alive by `black_box`.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(depth + 1) + frame[3]
}

export_transform!(Hostile);
