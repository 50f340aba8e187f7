//! Components written by hand in WAT, for attacks the Rust SDK cannot
//! express: a wrong number of outcomes, or many core memories.

/// The world's types, exported so the functions may use them.
const TYPES: &str = r#"
  (type $kind' (variant (case "product") (case "inventory") (case "price") (case "other" string)))
  (export $kind "event-kind" (type $kind'))
  (type $event' (record (field "id" string) (field "kind" $kind) (field "tenant" string)
    (field "channel" string) (field "source" string) (field "correlation-id" string) (field "payload" string)))
  (export $event "event" (type $event'))
  (type $violation' (record (field "path" string) (field "code" string) (field "message" string)))
  (export $violation "violation" (type $violation'))
  (type $outcome' (variant (case "emit" (list $event)) (case "drop" string) (case "reject" (list $violation))))
  (export $outcome "outcome" (type $outcome'))
"#;

/// A component of the `transform` world whose `apply` always returns
/// `outcomes` drop outcomes (reason "x"), whatever the batch, and which
/// also instantiates `memories` extra core modules of `pages` 64 KiB pages each.
pub fn component(outcomes: u32, memories: u32, pages: u32) -> Vec<u8> {
    // Each outcome: discriminant 1 (drop), then the reason's pointer and length.
    let mut list = String::new();
    for _ in 0..outcomes {
        list.push_str(r"\01\00\00\00\00\01\00\00\01\00\00\00");
    }
    let extra: String = (0..memories)
        .map(|n| format!("(core instance $mem{n} (instantiate $big))\n"))
        .collect();
    let wat = format!(
        r#"(component
  (core module $m
    (memory (export "memory") 2)
    (global $next (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and (i32.add (global.get $next) (i32.const 7)) (i32.const -8)))
      (global.set $next (i32.add (local.get $at) (local.get 3)))
      (local.get $at))
    (func (export "init") (param i32 i32) (result i32) (i32.const 0))
    (func (export "apply") (param i32 i32) (result i32) (i32.const 16))
    (data (i32.const 16) "\20\00\00\00{count}")
    (data (i32.const 32) "{list}")
    (data (i32.const 256) "x"))
  (core module $big (memory {pages}))
  (core instance $i (instantiate $m))
  {extra}
  {TYPES}
  (func (export "init") (param "config" string) (result (result (error string)))
    (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "apply") (param "batch" (list $event)) (result (list $outcome))
    (canon lift (core func $i "apply") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
)"#,
        count = le_bytes(outcomes),
    );
    wat::parse_str(&wat).unwrap_or_else(|err| panic!("{err}\n{wat}"))
}

fn le_bytes(value: u32) -> String {
    value.to_le_bytes().iter().map(|b| format!("\\{b:02x}")).collect()
}
