//! Embed the Sluice engine: load a transform component, run events through
//! it, read the outcomes and faults. `cargo run -p sluice-engine --example
//! embed -- <component.wasm> <events.jsonl> [config.json]`
use sluice_engine::event::{OutcomeJson, parse_events};
use sluice_engine::{Engine, EngineOptions, Limits, Pipeline};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(err) = run(&args) {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [component, events, rest @ ..] = args else {
        return Err("usage: embed <component.wasm> <events.jsonl> [config.json]".into());
    };
    let config = rest.first().map_or(Ok("{}".into()), std::fs::read_to_string)?;
    // One engine per process (set `cache_dir` to compile each component once).
    let engine = Engine::new(&EngineOptions::default())?;
    let module = engine.load_file(component.as_ref(), Limits::default())?;
    let pipeline = Pipeline::single(module, config);
    for outcome in pipeline.run(&parse_events(&std::fs::read_to_string(events)?)?) {
        match outcome {
            OutcomeJson::Emit { events } => events
                .iter()
                .for_each(|e| println!("emit {} {}", e.id, e.payload.get())),
            OutcomeJson::Drop { reason } => println!("drop {reason}"),
            OutcomeJson::Reject { violations } => violations
                .iter()
                .for_each(|v| println!("reject {} {}", v.path, v.code)),
            OutcomeJson::Partial { events, violations } => {
                events
                    .iter()
                    .for_each(|e| println!("emit {} {}", e.id, e.payload.get()));
                violations
                    .iter()
                    .for_each(|v| println!("reject {} {}", v.path, v.code));
            }
            OutcomeJson::Error { error } => println!("fault {error}"),
        }
    }
    Ok(())
}
