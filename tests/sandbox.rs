//! Hostile modules: each attack fails only its own event with a clear
//! fault naming the module and the event; the next event on the same
//! pipeline, and another module in the same process, carry on.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{engine, event, guest, magento_product};
use serde_json::{Value, json};
use sluice_engine::event::{EventJson, OutcomeJson};
use sluice_engine::pipeline::{Pipeline, Step};
use sluice_engine::{CacheOutcome, Engine, EngineOptions, FaultKind, Limits, LoadError, Module};

/// Loads a guest with the default limits but a generous deadline, so that
/// attacks on other limits hit those limits even on a loaded CI machine.
fn load(name: &str) -> Arc<Module> {
    load_with_timeout(name, Duration::from_secs(10))
}

/// Loads a guest with the default limits and this deadline per event.
fn load_with_timeout(name: &str, timeout: Duration) -> Arc<Module> {
    let limits = Limits {
        timeout,
        ..Limits::default()
    };
    Arc::new(engine().load_file(&guest(name), limits).expect("loads"))
}

fn run(module: &Arc<Module>, events: &[EventJson]) -> Vec<OutcomeJson> {
    Pipeline::new(vec![Step {
        module: module.clone(),
        config: "{}".into(),
        lookups: Default::default(),
    }])
    .run(events)
}

fn attack(id: &str, attack: &str) -> EventJson {
    event(id, "product", json!({ "attack": attack }))
}

/// The b2b-portal module still turns a real Magento product into a listing.
fn assert_other_module_unaffected() {
    let portal = load("b2b-portal");
    let outcomes = run(&portal, &[event("evt-portal", "product", magento_product())]);
    let OutcomeJson::Emit { events } = &outcomes[0] else {
        panic!("b2b-portal should emit, got {outcomes:?}");
    };
    let listing: Value = serde_json::from_str(events[0].payload.get()).unwrap();
    assert_eq!(listing["sku"], "MS-Champ-S");
    assert_eq!(listing["weight_kg"], "0.227");
}

/// Runs `[attack, normal]` as one batch and checks both outcomes.
fn assert_contained(attack_name: &str, check: impl Fn(&FaultKind) -> bool) {
    assert_contained_in(&load("hostile"), attack_name, check);
}

fn assert_contained_in(hostile: &Arc<Module>, attack_name: &str, check: impl Fn(&FaultKind) -> bool) {
    let event_id = format!("evt-{attack_name}");
    let outcomes = run(
        hostile,
        &[attack(&event_id, attack_name), attack("evt-next", "none")],
    );
    let OutcomeJson::Error { error } = &outcomes[0] else {
        panic!("{attack_name}: expected a fault, got {:?}", outcomes[0]);
    };
    assert_eq!(error.module, "hostile");
    assert_eq!(error.event, event_id);
    assert_eq!(error.version, hostile.version());
    assert!(check(&error.kind), "{attack_name}: unexpected fault {error}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "module `hostile` (version {}) failed on event `{event_id}`",
            hostile.version()
        )),
        "{message}"
    );
    assert!(
        matches!(&outcomes[1], OutcomeJson::Emit { events } if events[0].id == "evt-next"),
        "{attack_name}: the next event must pass, got {:?}",
        outcomes[1]
    );
    assert_other_module_unaffected();
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let hostile = load_with_timeout("hostile", Duration::from_millis(200));
    assert_contained_in(&hostile, "loop", |kind| {
        matches!(kind, FaultKind::Timeout { limit_ms: 200 })
    });
}

#[test]
fn one_gib_allocation_hits_the_memory_cap() {
    assert_contained(
        "alloc-1gib",
        |kind| matches!(kind, FaultKind::MemoryLimit { limit_bytes } if *limit_bytes == 128 << 20),
    );
}

#[test]
fn panic_is_a_trap_with_the_panic_message() {
    assert_contained(
        "panic",
        |kind| matches!(kind, FaultKind::Trap { detail } if detail.contains("hostile module panics on purpose for `evt-panic`")),
    );
}

#[test]
fn stack_overflow_is_contained() {
    assert_contained("stack-overflow", |kind| matches!(kind, FaultKind::StackOverflow));
}

#[test]
fn fifty_megabyte_output_hits_the_output_cap() {
    assert_contained(
        "giant-output",
        |kind| matches!(kind, FaultKind::OutputTooLarge { bytes, limit_bytes } if *bytes > 50_000_000 && *limit_bytes == 4 << 20),
    );
}

#[test]
fn reading_a_file_finds_no_filesystem() {
    assert_contained(
        "read-file",
        |kind| matches!(kind, FaultKind::Trap { detail } if detail.contains("reading /etc/passwd failed: No such file or directory")),
    );
}

#[test]
fn opening_a_socket_is_denied() {
    assert_contained(
        "open-socket",
        |kind| matches!(kind, FaultKind::Trap { detail } if detail.contains("connecting to 127.0.0.1:80 failed: Permission denied")),
    );
}

#[test]
fn emitting_invalid_json_is_a_fault_not_a_delivery() {
    assert_contained("not-json", |kind| {
        matches!(kind, FaultKind::InvalidPayload { .. })
    });
}

#[test]
fn sandbox_has_no_environment_a_frozen_clock_and_repeatable_randomness() {
    // A fresh instance for every call: nothing of the guest's own state carries over.
    let limits = Limits {
        calls_per_instance: 1,
        ..Limits::default()
    };
    let hostile = Arc::new(engine().load_file(&guest("hostile"), limits).expect("loads"));
    let first = probe(&hostile);
    assert_eq!(first["env"], json!([]));
    assert_eq!(first["now"], 1_735_689_600);
    assert!(first["root_dir"].as_str().unwrap().starts_with("Err("), "{first}");
    assert_eq!(probe(&hostile), first, "same input must give the same output");
}

/// What the `probe` attack saw: environment, clock, files, and a hash
/// seeded from the guest's own `RandomState` (which advances per map).
fn probe(module: &Arc<Module>) -> Value {
    let outcomes = run(module, &[attack("evt-probe", "probe")]);
    let OutcomeJson::Emit { events } = &outcomes[0] else {
        panic!("probe should emit, got {outcomes:?}");
    };
    serde_json::from_str::<Value>(events[0].payload.get()).unwrap()
}

#[test]
fn a_warm_instance_serves_the_next_call_until_it_traps() {
    let hostile = load("hostile");
    let fresh = probe(&hostile);
    let warm = probe(&hostile);
    assert_ne!(
        warm["random"], fresh["random"],
        "the second call ran on the same instance (its RandomState advanced)"
    );
    assert_eq!(
        warm["now"], fresh["now"],
        "the host's clock and randomness restart every call"
    );
    let outcomes = run(&hostile, &[attack("evt-panic", "panic")]);
    assert_eq!(outcomes[0].tag(), "error");
    assert_eq!(
        probe(&hostile)["random"],
        fresh["random"],
        "the instance that trapped was discarded; the next call got a fresh one"
    );
}

#[test]
fn a_chatty_module_is_truncated_not_killed() {
    let hostile = load("hostile");
    let outcomes = run(&hostile, &[attack("evt-chatty", "chatty")]);
    assert!(matches!(&outcomes[0], OutcomeJson::Emit { .. }), "{outcomes:?}");
}

#[test]
fn a_trap_mid_batch_fails_only_that_event() {
    let hostile = load("hostile");
    let batch = [
        attack("a", "none"),
        attack("b", "panic"),
        attack("c", "none"),
        attack("d", "stack-overflow"),
        attack("e", "none"),
    ];
    let tags: Vec<&str> = run(&hostile, &batch).iter().map(OutcomeJson::tag).collect();
    assert_eq!(tags, ["emit", "error", "emit", "error", "emit"]);
}

#[test]
fn other_modules_run_while_one_loops() {
    let looping = std::thread::spawn(|| {
        let hostile = load_with_timeout("hostile", Duration::from_millis(200));
        run(&hostile, &[attack("evt-loop", "loop")])
    });
    for _ in 0..20 {
        assert_other_module_unaffected();
    }
    let outcomes = looping.join().unwrap();
    assert!(
        matches!(&outcomes[0], OutcomeJson::Error { error } if matches!(error.kind, FaultKind::Timeout { .. }))
    );
}

#[test]
fn fuel_metering_stops_an_infinite_loop() {
    let engine = Engine::new(&EngineOptions {
        fuel: true,
        ..EngineOptions::default()
    })
    .unwrap();
    let limits = Limits {
        fuel_per_event: 5_000_000,
        timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let hostile = Arc::new(engine.load_file(&guest("hostile"), limits).unwrap());
    let outcomes = run(&hostile, &[attack("evt-fuel", "loop"), attack("evt-ok", "none")]);
    assert!(
        matches!(&outcomes[0], OutcomeJson::Error { error } if error.kind == FaultKind::OutOfFuel { fuel: 5_000_000 }),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1].tag(), "emit");
}

#[test]
fn a_component_of_another_world_is_refused_with_what_it_exports() {
    let err = engine()
        .load_file(&guest("other-world"), Limits::default())
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "module `other-world` does not implement a `sluice:transform` world (0.1.0 or 0.2.0): \
         it exports neither `init` and `apply` (0.1.0) nor `sluice:transform/step@0.2.0`; it exports [greet]"
    );
}

#[test]
fn a_component_of_a_newer_contract_is_refused_by_its_version() {
    let err = engine()
        .load_file(&guest("contract-0-3"), Limits::default())
        .err()
        .unwrap();
    assert!(
        matches!(&err, LoadError::UnknownContract { version, .. } if version == "0.3.0"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "module `contract-0-3` is built for contract `sluice:transform@0.3.0`, which this Sluice does not \
         run (it runs 0.1.0 and 0.2.0): upgrade Sluice, or build the module against a contract it runs"
    );
}

#[test]
fn random_bytes_are_refused() {
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let err = engine().load("random", &bytes, Limits::default()).err().unwrap();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
    let mut truncated = std::fs::read(guest("b2b-portal")).unwrap();
    truncated.truncate(truncated.len() / 2);
    let err = engine()
        .load("truncated", &truncated, Limits::default())
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");
}

#[test]
fn a_core_module_is_refused_with_a_hint() {
    let empty_core_module = b"\0asm\x01\0\0\0";
    let err = engine()
        .load("core", empty_core_module, Limits::default())
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
}

#[test]
fn init_errors_name_the_bad_config_field() {
    let portal = load("b2b-portal");
    let outcomes = Pipeline::new(vec![Step {
        module: portal,
        config: r#"{"max-title": 0}"#.into(),
        lookups: Default::default(),
    }])
    .run(&[event("evt-cfg", "product", magento_product())]);
    let OutcomeJson::Error { error } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(
        error.kind,
        FaultKind::Init {
            message: "config `max-title` must be at least 1".into()
        }
    );
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        ..EngineOptions::default()
    };
    let first = Engine::new(&options).unwrap();
    let module = first.load_file(&guest("b2b-portal"), Limits::default()).unwrap();
    assert_eq!(module.cache_outcome(), CacheOutcome::Compiled);
    let second = Engine::new(&options).unwrap();
    let cached = second.load_file(&guest("b2b-portal"), Limits::default()).unwrap();
    assert_eq!(cached.cache_outcome(), CacheOutcome::Hit);
    // The cached module really works.
    let outcomes = run(&Arc::new(cached), &[event("evt-c", "product", magento_product())]);
    assert_eq!(outcomes[0].tag(), "emit");
    // An engine with other settings (fuel) does not reuse the artifact.
    let fuel = Engine::new(&EngineOptions {
        fuel: true,
        ..options
    })
    .unwrap();
    let recompiled = fuel.load_file(&guest("b2b-portal"), Limits::default()).unwrap();
    assert_eq!(recompiled.cache_outcome(), CacheOutcome::Compiled);
}

// --- Host calls that wait: virtual time and bounded waits (issue: a guest
// that sleeps hung the host). Each must end at once or at the deadline.

#[test]
fn sleeping_an_hour_returns_at_once_on_virtual_time() {
    let hostile = load_with_timeout("hostile", Duration::from_millis(500));
    let started = std::time::Instant::now();
    let outcomes = run(&hostile, &[attack("evt-sleep", "sleep-hour")]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let OutcomeJson::Emit { events } = &outcomes[0] else {
        panic!("sleep-hour should emit, got {outcomes:?}");
    };
    let slept: Value = serde_json::from_str(events[0].payload.get()).unwrap();
    assert_eq!(
        slept["slept_secs"], 3600,
        "the guest's clock moved by the hour it slept"
    );
}

#[test]
fn sleeping_forever_returns_at_once_on_virtual_time() {
    let hostile = load_with_timeout("hostile", Duration::from_millis(200));
    let started = std::time::Instant::now();
    let outcomes = run(
        &hostile,
        &[attack("evt-forever", "sleep-forever"), attack("evt-next", "none")],
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for outcome in &outcomes {
        assert!(matches!(outcome, OutcomeJson::Emit { .. }), "{outcome:?}");
    }
}

#[test]
fn polling_a_pollable_that_never_comes_returns() {
    let hostile = load_with_timeout("hostile", Duration::from_millis(500));
    let outcomes = run(&hostile, &[attack("evt-poll", "poll-never")]);
    let OutcomeJson::Emit { events } = &outcomes[0] else {
        panic!("poll-never should emit, got {outcomes:?}");
    };
    let ready: Value = serde_json::from_str(events[0].payload.get()).unwrap();
    assert!(!ready["ready"].as_array().unwrap().is_empty(), "{ready}");
}

#[test]
fn a_busy_poll_loop_hits_the_deadline() {
    let hostile = load_with_timeout("hostile", Duration::from_millis(200));
    assert_contained_in(&hostile, "busy-poll", |kind| {
        matches!(kind, FaultKind::Timeout { limit_ms: 200 })
    });
}

#[test]
fn an_init_that_sleeps_returns_at_once() {
    let hostile = load_with_timeout("hostile", Duration::from_millis(200));
    let outcomes = Pipeline::new(vec![Step {
        module: hostile,
        config: json!({ "init": "sleep" }).to_string(),
        lookups: Default::default(),
    }])
    .run(&[attack("evt-1", "none")]);
    assert!(matches!(&outcomes[0], OutcomeJson::Emit { .. }), "{outcomes:?}");
}

#[test]
fn an_init_that_loops_fails_its_batch_once_not_per_event() {
    for attack_name in ["loop"] {
        let hostile = load_with_timeout("hostile", Duration::from_millis(200));
        let started = std::time::Instant::now();
        let batch: Vec<EventJson> = (0..60).map(|n| attack(&format!("evt-{n}"), "none")).collect();
        let outcomes = Pipeline::new(vec![Step {
            module: hostile.clone(),
            config: json!({ "init": attack_name }).to_string(),
            lookups: Default::default(),
        }])
        .run(&batch);
        for outcome in &outcomes {
            assert!(
                matches!(outcome, OutcomeJson::Error { error } if matches!(error.kind, FaultKind::Timeout { limit_ms: 200 })),
                "{attack_name}: {outcome:?}"
            );
        }
        // One deadline for the whole batch (0.2 s), not sixty (12 s).
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{attack_name}: took {:?}",
            started.elapsed()
        );
    }
    assert_other_module_unaffected();
}

// --- Outputs: every byte is metered, fan-out is capped.

#[test]
fn a_fan_out_of_a_million_hits_the_fan_out_cap() {
    let limits = Limits {
        timeout: Duration::from_secs(20),
        memory_bytes: 1 << 30,
        ..Limits::default()
    };
    let hostile = Arc::new(engine().load_file(&guest("hostile"), limits).expect("loads"));
    // Either wasmtime's own cap on data copied out of the guest, or ours
    // on the number of outputs, stops it: both fail this event alone.
    assert_contained_in(&hostile, "fan-out-million", |kind| match kind {
        FaultKind::TooManyOutputs {
            count: 1_000_000,
            limit: 1000,
        } => true,
        FaultKind::Trap { detail } => detail.contains("too much data is being copied"),
        _ => false,
    });
}

#[test]
fn a_giant_source_field_counts_against_the_output_cap() {
    assert_contained(
        "giant-source",
        |kind| matches!(kind, FaultKind::OutputTooLarge { bytes, .. } if *bytes > 10 << 20),
    );
}

#[test]
fn log_spam_is_truncated_and_counted() {
    let hostile = load("hostile");
    let outcomes = run(&hostile, &[attack("evt-spam", "log-spam")]);
    let OutcomeJson::Error { error } = &outcomes[0] else {
        panic!("log-spam should fault, got {outcomes:?}");
    };
    assert!(error.log.len() < 20 << 10, "log kept: {} bytes", error.log.len());
    assert!(
        error.log.contains("[log truncated: "),
        "{}",
        &error.log[error.log.len() - 200..]
    );
}

#[test]
fn a_fan_out_that_multiplies_across_steps_is_capped_per_input_event() {
    // Each step turns one event into three; with a cap of 5 per event, each
    // step alone is within it, but in the second step the input's branches
    // pass it (6 outputs after two of its three children).
    let limits = Limits {
        timeout: Duration::from_secs(10),
        max_fan_out: 5,
        ..Limits::default()
    };
    let hostile = Arc::new(engine().load_file(&guest("hostile"), limits).expect("loads"));
    let step = Step {
        module: hostile.clone(),
        config: "{}".into(),
        lookups: Default::default(),
    };
    let outcomes = Pipeline::new(vec![step.clone(), step]).run(&[
        attack("evt-twice", "fan-out-twice"),
        attack("evt-once", "fan-out"),
    ]);
    let OutcomeJson::Error { error } = &outcomes[0] else {
        panic!(
            "more than five outputs for one input must fault, got {:?}",
            outcomes[0]
        );
    };
    assert_eq!(error.event, "evt-twice");
    assert!(
        matches!(error.kind, FaultKind::TooManyOutputs { count: 6, limit: 5 }),
        "{error}"
    );
    assert!(
        matches!(&outcomes[1], OutcomeJson::Emit { events } if events.len() == 3),
        "{:?}",
        outcomes[1]
    );
}

// --- Contract breaches and resources only a hand-written component can reach.

fn load_raw(name: &str, bytes: &[u8], limits: Limits) -> Result<Arc<Module>, LoadError> {
    engine().load(name, bytes, limits).map(Arc::new)
}

#[test]
fn fewer_or_more_outcomes_than_events_is_a_fault_per_event() {
    for (returned, batch) in [(0u32, 2usize), (3, 1), (3, 2)] {
        let module = load_raw(
            "miscount",
            &crate::support::raw::component(returned, 0, 1),
            Limits::default(),
        )
        .expect("loads");
        let events: Vec<EventJson> = (0..batch).map(|n| attack(&format!("evt-{n}"), "none")).collect();
        let outcomes = run(&module, &events);
        assert_eq!(outcomes.len(), batch);
        for outcome in &outcomes {
            assert!(
                matches!(outcome, OutcomeJson::Error { error } if matches!(error.kind, FaultKind::OutcomeCount { got, expected: 1 } if got == returned as usize)),
                "{returned} for {batch}: {outcome:?}"
            );
        }
    }
    // The hand-written component does answer a batch of the size it returns.
    let module = load_raw(
        "miscount",
        &crate::support::raw::component(1, 0, 1),
        Limits::default(),
    )
    .unwrap();
    assert!(
        matches!(&run(&module, &[attack("evt-1", "none")])[0], OutcomeJson::Drop { reason } if reason == "x")
    );
}

#[test]
fn many_memories_share_one_budget() {
    // Seven extra memories of 20 MiB: each is far under the per-memory
    // maximum, together they are over the 128 MiB budget of the instance.
    let module = load_raw(
        "many-memories",
        &crate::support::raw::component(1, 7, 320),
        Limits::default(),
    )
    .expect("loads");
    let fault = module.check_instantiate().unwrap_err();
    assert!(
        matches!(fault, FaultKind::MemoryLimit { limit_bytes } if limit_bytes == 128 << 20),
        "{fault}"
    );
    let outcomes = run(&module, &[attack("evt-1", "none")]);
    assert!(
        matches!(&outcomes[0], OutcomeJson::Error { error } if matches!(error.kind, FaultKind::MemoryLimit { .. })),
        "{outcomes:?}"
    );
    // Within the budget, the same shape runs.
    let small = load_raw(
        "few-memories",
        &crate::support::raw::component(1, 4, 16),
        Limits::default(),
    )
    .unwrap();
    assert!(small.check_instantiate().is_ok());
}

#[test]
fn more_memories_than_a_component_may_hold_is_refused() {
    let too_many = sluice_engine::MAX_MEMORIES_PER_COMPONENT + 1;
    let result = load_raw(
        "too-many-memories",
        &crate::support::raw::component(1, too_many, 1),
        Limits::default(),
    )
    .map(|module| module.check_instantiate());
    match result {
        Err(err) => assert!(err.to_string().contains("memories"), "{err}"),
        Ok(Err(fault)) => assert!(fault.to_string().contains("memories"), "{fault}"),
        Ok(Ok(())) => panic!("a component with {too_many} extra memories must be refused"),
    }
}

/// Tries `events` inline on a worker thread of a multi-threaded tokio
/// runtime, where the sidecar tries them.
fn try_inline_on_a_worker(pipeline: &Pipeline, events: Vec<EventJson>) -> Option<Vec<OutcomeJson>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pipeline = pipeline.clone();
    runtime
        .block_on(async move { tokio::spawn(async move { pipeline.try_run_inline(&events).ok() }).await })
        .expect("the worker's task does not panic")
}

#[test]
fn an_inline_run_gives_up_on_every_attack_that_would_hold_a_worker_and_the_blocking_run_gives_the_fault() {
    // Each attack would hold the thread: by running on (loop, busy-poll),
    // or by a host call that needs a blocking thread (udp-socket).
    for (name, blocking) in [
        ("loop", "timeout"),
        ("busy-poll", "timeout"),
        ("udp-socket", "emit"),
    ] {
        let hostile = load_with_timeout("hostile", Duration::from_millis(200));
        let pipeline = Pipeline::single(hostile, "{}");
        let events = vec![attack("evt-attack", name)];
        assert!(
            try_inline_on_a_worker(&pipeline, events.clone()).is_none(),
            "{name}"
        );
        let outcomes = pipeline.run(&events);
        let got = match &outcomes[0] {
            OutcomeJson::Error { error } if matches!(error.kind, FaultKind::Timeout { limit_ms: 200 }) => {
                "timeout"
            }
            OutcomeJson::Emit { .. } => "emit",
            other => panic!("{name}: unexpected {other:?}"),
        };
        assert_eq!(got, blocking, "{name}");
        // The module is marked: a harmless event skips the inline attempt
        // too, and still runs on a blocking thread.
        let harmless = vec![attack("evt-next", "none")];
        assert!(
            try_inline_on_a_worker(&pipeline, harmless.clone()).is_none(),
            "{name}"
        );
        assert!(
            matches!(&pipeline.run(&harmless)[0], OutcomeJson::Emit { .. }),
            "{name}"
        );
    }
}

#[test]
fn an_inline_run_gives_the_same_outcomes_as_a_blocking_one() {
    let events = vec![
        attack("evt-none", "none"),
        attack("evt-not-json", "not-json"),
        attack("evt-reject", "reject"),
        attack("evt-drop", "drop"),
        attack("evt-sleep", "sleep-hour"),
        attack("evt-poll", "poll-never"),
        attack("evt-deep", "deep-output"),
    ];
    let pipeline = Pipeline::single(load("hostile"), "{}");
    let inline = try_inline_on_a_worker(&pipeline, events.clone()).expect("runs inline");
    let blocking = pipeline.run(&events);
    assert_eq!(
        serde_json::to_string(&inline).unwrap(),
        serde_json::to_string(&blocking).unwrap()
    );
    assert!(matches!(&inline[1], OutcomeJson::Error { .. }), "{:?}", inline[1]);
}

#[test]
fn a_batch_that_traps_inline_goes_to_a_blocking_thread_without_marking_the_module_slow() {
    let module = load("hostile");
    let batch = vec![attack("evt-panic", "panic"), attack("evt-next", "none")];
    // Each round on a module of its own, warmed on a blocking thread so no
    // inline attempt pays for instantiation. A machine busy with other
    // tests (a Python component compiling on every core) can run an inline
    // attempt out of its CPU slice, which marks that module slow for a
    // minute; so one round in a few that shows it is the proof.
    let proven = (0..8).any(|_| {
        let pipeline = Pipeline::single(Arc::new(module.isolated()), "{}");
        pipeline.run(&[attack("evt-warm", "none")]);
        if try_inline_on_a_worker(&pipeline, vec![attack("evt-warm", "none")]).is_none() {
            return false;
        }
        // Re-running a trapped batch event by event could take as long as
        // the events' deadlines, so that never happens inline.
        assert!(try_inline_on_a_worker(&pipeline, batch.clone()).is_none());
        let outcomes = pipeline.run(&batch);
        assert!(
            matches!(&outcomes[0], OutcomeJson::Error { .. }),
            "{:?}",
            outcomes[0]
        );
        assert!(
            matches!(&outcomes[1], OutcomeJson::Emit { .. }),
            "{:?}",
            outcomes[1]
        );
        // A trap is no sign of slowness: the next small batch runs inline.
        try_inline_on_a_worker(&pipeline, vec![attack("evt-later", "none")]).is_some()
    });
    assert!(proven, "the module was marked slow by a trap in every round");
}

/// The hostile guest as both steps of one pipeline (one module, two steps).
fn hostile_twice() -> Pipeline {
    let hostile = load("hostile");
    let step = || Step {
        module: hostile.clone(),
        config: "{}".into(),
        lookups: Default::default(),
    };
    Pipeline::new(vec![step(), step()])
}

#[test]
fn an_abandoned_inline_attempt_keeps_none_of_its_instances_warm() {
    // Step 1 passes on a loop that step 2 runs: the attempt gives up in
    // step 2, after step 1's instance has seen the event.
    let pipeline = hostile_twice();
    assert!(try_inline_on_a_worker(&pipeline, vec![attack("evt-loop", "then-loop")]).is_none());
    // A fresh instance counts this as its first event; one kept from the
    // attempt would count two.
    let outcomes = pipeline.run(&[attack("evt-count", "count")]);
    let OutcomeJson::Emit { events } = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    let seen: Value = serde_json::from_str(events[0].payload.get()).unwrap();
    assert_eq!(seen["seen"], 1, "{seen}");
}

#[test]
fn a_fan_out_wider_than_one_call_leaves_the_inline_attempt_for_a_blocking_thread() {
    let pipeline = hostile_twice();
    let wide = vec![attack("evt-wide", "fan-out-wide")];
    assert!(try_inline_on_a_worker(&pipeline, wide.clone()).is_none());
    // Marked: even a harmless event now skips the inline attempt.
    assert!(try_inline_on_a_worker(&pipeline, vec![attack("evt-next", "none")]).is_none());
    let OutcomeJson::Emit { events } = &pipeline.run(&wide)[0] else {
        panic!("the fan-out should emit");
    };
    assert_eq!(events.len(), 200);
}
