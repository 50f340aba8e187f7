//! Golden fixtures: the engine behind `sluice test`.
//!
//! A fixtures directory holds one folder per case:
//!
//! ```text
//! fixtures/
//!   simple-product/
//!     input.json       one event   (or input.jsonl: one event per line)
//!     config.json      optional: the step's config
//!     expected.json    the outcome (an array of outcomes for input.jsonl)
//!     budget.json      optional: the most the case may cost (see [`crate::budget`])
//!     state.json       optional: the step's state before the case (contract 0.2)
//!     expected-state.json  optional: its state after the case
//!     lookups.json     optional: the step's lookup tables
//! ```
//!
//! For one module, `state.json` and `expected-state.json` map keys to
//! JSON values (`{"TEE-1": {"qty": 4}}`) and `lookups.json` maps table
//! names to tables (`{"asin": {"TEE-1": "B00X"}}`). For a pipeline, each
//! is keyed by step name first ([`Pipeline::step_names`]). A case's state
//! lives only in memory: it never touches a sidecar's.
//!
//! Every case is measured ([`Usage`]): fuel when the engine meters it,
//! peak memory and bytes returned. A case over its budget fails. With a
//! baseline, every case also runs through the baseline and the two
//! outputs and costs are compared instead of reading `expected.json`.
//!
//! Outputs are compared structurally; each difference is reported with
//! the JSON path where it occurs. An error outcome's `version` (the module's
//! hash) is left out, since it changes with every rebuild. Blessing rewrites `expected.json` from
//! the actual output.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Module;
use crate::budget::{BUDGET_FILE, Budget, Delta, Overrun, deltas};
use crate::diff::{Differences, diff};
use crate::event::parse_events;
use crate::pipeline::{Pipeline, Step};
use crate::state::{MemoryState, RunContext};
use crate::usage::{Usage, measure};

/// Why a fixtures directory could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The directory cannot be listed.
    #[error("cannot read fixtures directory `{path}`: {error}")]
    Read {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The directory has no case folders.
    #[error(
        "fixtures directory `{0}` has no cases: add a folder with an `input.json` and an `expected.json`"
    )]
    Empty(PathBuf),
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseStatus {
    /// Output matched `expected.json`.
    Passed,
    /// `expected.json` was (re)written from the output.
    Blessed,
    /// Output differed from `expected.json` (or, with a baseline, from the
    /// baseline's output), at these paths.
    Differs(Differences),
    /// The state after the case differed from `expected-state.json`.
    StateDiffers(Differences),
    /// The case could not run; the text says why.
    Failed(String),
}

impl CaseStatus {
    /// Whether the case failed (differed or could not run).
    pub fn failed(&self) -> bool {
        matches!(
            self,
            CaseStatus::Differs(_) | CaseStatus::StateDiffers(_) | CaseStatus::Failed(_)
        )
    }

    /// Why the case failed, as `sluice test` prints it; empty if it did not.
    pub fn message(&self) -> String {
        match self {
            CaseStatus::Passed | CaseStatus::Blessed => String::new(),
            CaseStatus::Failed(why) => why.clone(),
            CaseStatus::Differs(differences) | CaseStatus::StateDiffers(differences) => {
                let file = match self {
                    CaseStatus::StateDiffers(_) => "expected-state.json",
                    _ => "expected.json",
                };
                let mut message = format!("{} from {file}:\n", differences.summary());
                for difference in differences {
                    message.push_str(&difference.to_string());
                    message.push('\n');
                }
                message
            }
        }
    }
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case folder's name.
    pub name: String,
    /// How it ended.
    pub status: CaseStatus,
    /// How long it took.
    pub duration: Duration,
    /// What the subject's guests cost.
    pub usage: Usage,
    /// Figures over the case's budget.
    pub over_budget: Vec<Overrun>,
    /// With a baseline: how it compared.
    pub baseline: Option<BaselineResult>,
}

/// How a case's run compared with the baseline's.
#[derive(Debug, Clone)]
pub struct BaselineResult {
    /// Where the outputs differ (`expected` is the baseline's).
    pub differences: Differences,
    /// What the baseline's guests cost.
    pub usage: Usage,
    /// Each figure's move from the baseline.
    pub deltas: Vec<Delta>,
    /// Figures that grew by more than the allowed regression.
    pub regressions: Vec<Delta>,
}

impl CaseResult {
    /// Whether the case failed: it differed, could not run, went over its
    /// budget, or regressed from the baseline.
    pub fn failed(&self) -> bool {
        self.status.failed()
            || !self.over_budget.is_empty()
            || self.baseline.as_ref().is_some_and(|b| !b.regressions.is_empty())
    }

    /// Why the case failed, as `sluice test` prints it; empty if it did not.
    pub fn message(&self) -> String {
        let mut message = match (&self.status, &self.baseline) {
            (CaseStatus::Differs(differences), Some(_)) => format!(
                "output differs from the baseline's at {}; accept it with --allow-output-changes\n",
                differences.counted("path(s)")
            ),
            (status, _) => status.message(),
        };
        for overrun in &self.over_budget {
            message.push_str(&format!("{overrun}\n"));
        }
        for regression in self.baseline.iter().flat_map(|b| &b.regressions) {
            message.push_str(&format!("{regression}: over the allowed regression\n"));
        }
        message
    }

    /// The result as structured JSON, as the upload API returns it:
    /// `{"case", "status", "differences": [{"path", "expected", "actual"}]}`
    /// or `{"case", "status": "failed", "error"}`.
    pub fn to_json(&self) -> Value {
        let (status, extra) = match &self.status {
            CaseStatus::Passed => ("passed", None),
            CaseStatus::Blessed => ("blessed", None),
            CaseStatus::Failed(why) => ("failed", Some(("error", Value::String(why.clone())))),
            CaseStatus::Differs(differences) => {
                ("failed", Some(("differences", differences.to_json().into())))
            }
            CaseStatus::StateDiffers(differences) => (
                "failed",
                Some(("state-differences", differences.to_json().into())),
            ),
        };
        let status = if status == "passed" && self.failed() {
            "failed"
        } else {
            status
        };
        let mut json = serde_json::json!({
            "case": self.name,
            "status": status,
            "usage": self.usage,
            "wall-ms": self.duration.as_secs_f64() * 1000.0,
        });
        if let Some((key, value)) = extra {
            json[key] = value;
        }
        if let CaseStatus::Differs(differences) | CaseStatus::StateDiffers(differences) = &self.status {
            json["differences-total"] = differences.total.into();
        }
        if !self.over_budget.is_empty() {
            json["over-budget"] = serde_json::json!(self.over_budget);
        }
        if let Some(baseline) = &self.baseline {
            json["baseline"] = serde_json::json!({
                "usage": baseline.usage,
                "deltas": baseline.deltas,
                "regressions": baseline.regressions,
                "differences": baseline.differences.to_json(),
                "differences-total": baseline.differences.total,
            });
        }
        json
    }
}

/// The results of one fixtures directory.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    /// The suite's name (the transform's name).
    pub name: String,
    /// One result per case, in folder-name order.
    pub cases: Vec<CaseResult>,
}

impl SuiteReport {
    /// Cases that did not fail.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| !c.failed()).count()
    }

    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }
}

/// What to run each case through.
pub enum Subject {
    /// One module; each case's `config.json` is its config.
    Module(Arc<Module>),
    /// A fixed pipeline; cases' `config.json` files are not used.
    Pipeline(Pipeline),
}

impl Subject {
    fn pipeline_for(&self, config: Option<String>) -> Pipeline {
        match self {
            Subject::Module(module) => Pipeline::new(vec![Step {
                module: module.clone(),
                config: config.unwrap_or_else(|| "{}".into()),
                lookups: Default::default(),
            }]),
            Subject::Pipeline(pipeline) => pipeline.clone(),
        }
    }
}

/// How [`run_suite`] runs the cases.
#[derive(Default)]
pub struct SuiteOptions<'a> {
    /// Rewrite every `expected.json` from the output instead of comparing.
    pub bless: bool,
    /// Write each case's `budget.json` from its figures plus this many per
    /// cent, instead of checking budgets.
    pub bless_budgets: Option<f64>,
    /// Run every case through this too and compare with it instead of
    /// with `expected.json`.
    pub baseline: Option<&'a Subject>,
    /// With a baseline: outputs that differ do not fail the case.
    pub allow_output_changes: bool,
    /// With a baseline: a figure that grows by more than this many per
    /// cent fails the case.
    pub max_regression: Option<f64>,
}

/// Runs every case in `dir` as `options` say.
pub fn run_suite(
    name: &str,
    subject: &Subject,
    dir: &Path,
    options: &SuiteOptions,
) -> Result<SuiteReport, FixtureError> {
    let read_err = |error| FixtureError::Read {
        path: dir.to_path_buf(),
        error,
    };
    let mut case_dirs: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_dir())
        .collect();
    case_dirs.sort();
    if case_dirs.is_empty() {
        return Err(FixtureError::Empty(dir.to_path_buf()));
    }
    let suite_budget = Budget::read(dir, &format!("fixtures/{BUDGET_FILE}"));
    let cases = case_dirs
        .iter()
        .map(|case_dir| {
            let name = case_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let started = Instant::now();
            let mut result = CaseResult {
                name,
                status: CaseStatus::Passed,
                duration: Duration::ZERO,
                usage: Usage::default(),
                over_budget: Vec::new(),
                baseline: None,
            };
            if let Err(why) = run_case(subject, case_dir, options, suite_budget.clone(), &mut result) {
                result.status = CaseStatus::Failed(why);
            }
            result.duration = started.elapsed();
            result
        })
        .collect();
    Ok(SuiteReport {
        name: name.to_string(),
        cases,
    })
}

/// One case's events and config, as read from its folder.
struct Case {
    inputs: Vec<crate::event::EventJson>,
    config: Option<String>,
    /// `input.json`: one event, and one outcome expected rather than an array.
    single: bool,
    /// `state.json`, as the file holds it.
    state: Option<Value>,
    /// `lookups.json`, as the file holds it.
    lookups: Option<Value>,
}

impl Case {
    fn read(dir: &Path) -> Result<Case, String> {
        let case = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let (input_name, single) = match (dir.join("input.json"), dir.join("input.jsonl")) {
            (json, _) if json.is_file() => ("input.json", true),
            (_, jsonl) if jsonl.is_file() => ("input.jsonl", false),
            _ => return Err(format!("no `input.json` or `input.jsonl` in case `{case}`")),
        };
        let input_text = read(dir, input_name)?;
        let inputs = parse_events(&input_text).map_err(|err| format!("{case}/{input_name}: {err}"))?;
        if single && inputs.len() != 1 {
            return Err(format!(
                "{case}/{input_name}: holds {} events; use `input.jsonl` for more than one",
                inputs.len()
            ));
        }
        let config = if dir.join("config.json").is_file() {
            let text = read(dir, "config.json")?;
            serde_json::from_str::<Value>(&text).map_err(|err| format!("{case}/config.json: {err}"))?;
            Some(text)
        } else {
            None
        };
        let optional = |file: &str| -> Result<Option<Value>, String> {
            if !dir.join(file).is_file() {
                return Ok(None);
            }
            let text = read(dir, file)?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|err| format!("{case}/{file}: {err}"))
        };
        Ok(Case {
            inputs,
            config,
            single,
            state: optional("state.json")?,
            lookups: optional("lookups.json")?,
        })
    }

    /// The outcomes of `subject` on this case, as `expected.json` holds
    /// them, what its guests cost, and the state after it, as
    /// `expected-state.json` holds it.
    fn run(&self, subject: &Subject) -> Result<(Value, Usage, Value), String> {
        let pipeline = subject.pipeline_for(self.config.clone());
        let names = pipeline.step_names();
        let mut state = MemoryState::default();
        if let Some(file) = &self.state {
            for (step, values) in by_step(subject, &names, file, "state.json")? {
                for (key, value) in values {
                    state.insert(&step, &key, value.to_string());
                }
            }
        }
        let mut context = RunContext {
            usage: state.usage(),
            ..RunContext::empty()
        };
        if let Some(file) = &self.lookups {
            for (step, tables) in by_step(subject, &names, file, "lookups.json")? {
                let mut step_tables = crate::state::StepLookups::new();
                for (table, rows) in tables {
                    let Value::Object(rows) = rows else {
                        return Err(format!(
                            "lookups.json: table `{table}` is not an object of key to value"
                        ));
                    };
                    let rows = rows
                        .into_iter()
                        .map(|(k, v)| (k, v.to_string().into_boxed_str()))
                        .collect();
                    step_tables.insert(table, Arc::new(rows));
                }
                context.lookups.insert(step, step_tables);
            }
        }
        let start = Arc::new(state.clone());
        context.store = Some(start);
        let (run, usage) = measure(|| pipeline.run_in(&self.inputs, &context));
        for change in &run.writes {
            state.apply(&change.writes);
        }
        let mut actual = serde_json::to_value(&run.outcomes).map_err(|err| err.to_string())?;
        forget_module_versions(&mut actual);
        if self.single {
            actual = actual.as_array_mut().and_then(|a| a.pop()).unwrap_or(Value::Null);
        }
        Ok((actual, usage, state_file(subject, &state)))
    }
}

/// A JSON object, as a fixture file holds one.
type JsonObject = serde_json::Map<String, Value>;

/// A fixture file's contents per step: for one module the file is the
/// step's, for a pipeline it is keyed by step name.
fn by_step(
    subject: &Subject,
    names: &[String],
    file: &Value,
    file_name: &str,
) -> Result<Vec<(String, JsonObject)>, String> {
    let Value::Object(top) = file else {
        return Err(format!("{file_name} is not a JSON object"));
    };
    match subject {
        Subject::Module(_) => Ok(vec![(names[0].clone(), top.clone())]),
        Subject::Pipeline(_) => top
            .iter()
            .map(|(step, values)| {
                if !names.contains(step) {
                    return Err(format!(
                        "{file_name}: the pipeline has no step `{step}` (its steps: {})",
                        names.join(", ")
                    ));
                }
                match values {
                    Value::Object(values) => Ok((step.clone(), values.clone())),
                    _ => Err(format!("{file_name}: step `{step}` is not an object")),
                }
            })
            .collect(),
    }
}

/// The state as `expected-state.json` holds it: values as JSON (every
/// value a step stores is a JSON text), keyed by step for a pipeline.
fn state_file(subject: &Subject, state: &MemoryState) -> Value {
    let mut steps = serde_json::Map::new();
    for ((step, key), text) in state.values() {
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let entry = steps
            .entry(step)
            .or_insert_with(|| Value::Object(Default::default()));
        entry
            .as_object_mut()
            .expect("made as an object")
            .insert(key, value);
    }
    match subject {
        Subject::Module(_) => steps
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .unwrap_or(Value::Object(Default::default())),
        Subject::Pipeline(_) => Value::Object(steps),
    }
}

/// Runs one case into `result`; an error is a case that could not run.
fn run_case(
    subject: &Subject,
    dir: &Path,
    options: &SuiteOptions,
    suite_budget: Result<Option<Budget>, String>,
    result: &mut CaseResult,
) -> Result<(), String> {
    let name = result.name.clone();
    let case = Case::read(dir)?;
    let (actual, usage, state_after) = case.run(subject)?;
    result.usage = usage;

    match options.bless_budgets {
        Some(headroom) => {
            let budget = Budget::from_usage(&usage, headroom);
            let mut text = serde_json::to_string_pretty(&budget).map_err(|err| err.to_string())?;
            text.push('\n');
            fs::write(dir.join(BUDGET_FILE), text)
                .map_err(|err| format!("cannot write {name}/{BUDGET_FILE}: {}", err.kind()))?;
        }
        None => {
            let case_budget = Budget::read(dir, &format!("{name}/{BUDGET_FILE}"))?;
            let budget = suite_budget?
                .unwrap_or_default()
                .overridden_by(case_budget.unwrap_or_default());
            result.over_budget = budget.check(&usage);
        }
    }

    if let Some(baseline) = options.baseline {
        let (before, before_usage, _) = case.run(baseline)?;
        let differences = diff(&before, &actual);
        let deltas = deltas(&before_usage, &usage);
        let regressions = match options.max_regression {
            Some(percent) => deltas.iter().filter(|d| d.regressed(percent)).cloned().collect(),
            None => Vec::new(),
        };
        if !differences.is_empty() && !options.allow_output_changes {
            result.status = CaseStatus::Differs(differences.clone());
        }
        result.baseline = Some(BaselineResult {
            differences,
            usage: before_usage,
            deltas,
            regressions,
        });
        return Ok(());
    }

    let expected_path = dir.join("expected.json");
    let state_path = dir.join("expected-state.json");
    if options.bless {
        let mut text = serde_json::to_string_pretty(&actual).map_err(|err| err.to_string())?;
        text.push('\n');
        fs::write(&expected_path, text).map_err(|err| format!("cannot write expected.json: {err}"))?;
        // Written where the case has state, or had an expected state.
        let stateful =
            case.state.is_some() || state_path.is_file() || state_after != Value::Object(Default::default());
        if stateful {
            let mut text = serde_json::to_string_pretty(&state_after).map_err(|err| err.to_string())?;
            text.push('\n');
            fs::write(&state_path, text).map_err(|err| format!("cannot write expected-state.json: {err}"))?;
        }
        result.status = CaseStatus::Blessed;
        return Ok(());
    }
    if !expected_path.is_file() {
        return Err(format!(
            "no `expected.json` in case `{name}`: run with `--bless` to create it from the actual output"
        ));
    }
    let expected_text = read(dir, "expected.json")?;
    let expected: Value =
        serde_json::from_str(&expected_text).map_err(|err| format!("{name}/expected.json: {err}"))?;
    let differences = diff(&expected, &actual);
    if !differences.is_empty() {
        result.status = CaseStatus::Differs(differences);
        return Ok(());
    }
    if state_path.is_file() {
        let text = read(dir, "expected-state.json")?;
        let expected: Value =
            serde_json::from_str(&text).map_err(|err| format!("{name}/expected-state.json: {err}"))?;
        let differences = diff(&expected, &state_after);
        if !differences.is_empty() {
            result.status = CaseStatus::StateDiffers(differences);
        }
    }
    Ok(())
}

/// Removes `version` from error outcomes: it is the module's hash, which
/// changes with every rebuild, so fixtures neither store nor compare it.
fn forget_module_versions(outcomes: &mut Value) {
    for outcome in outcomes.as_array_mut().into_iter().flatten() {
        if let Some(error) = outcome.get_mut("error").and_then(Value::as_object_mut) {
            error.remove("version");
        }
    }
}

/// Largest fixture file read, in bytes.
const MAX_FIXTURE_FILE: u64 = 64 << 20;

/// Reads a case's file, at most [`MAX_FIXTURE_FILE`] bytes of a regular
/// file; errors name the case and the file, never a full path.
fn read(dir: &Path, file: &str) -> Result<String, String> {
    use std::io::Read;
    let path = dir.join(file);
    let case = dir.file_name().unwrap_or_default().to_string_lossy();
    let name = format!("{case}/{file}");
    let file = fs::File::open(&path).map_err(|err| format!("cannot read {name}: {}", err.kind()))?;
    let meta = file
        .metadata()
        .map_err(|err| format!("cannot read {name}: {}", err.kind()))?;
    if !meta.is_file() {
        return Err(format!("{name} is not a regular file"));
    }
    if meta.len() > MAX_FIXTURE_FILE {
        return Err(format!(
            "{name} is {} bytes, over the {MAX_FIXTURE_FILE}-byte limit",
            meta.len()
        ));
    }
    let mut text = String::new();
    file.take(MAX_FIXTURE_FILE)
        .read_to_string(&mut text)
        .map_err(|err| format!("cannot read {name}: {err}"))?;
    Ok(text)
}

/// JUnit XML for these suites, as CI systems read it.
pub fn junit_xml(suites: &[SuiteReport]) -> String {
    use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("sluice test");
    for suite in suites {
        let mut test_suite = TestSuite::new(suite.name.as_str());
        for case in &suite.cases {
            let status = if case.failed() {
                let message = case.message();
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(message.lines().next().unwrap_or("failed"));
                status.set_description(message.as_str());
                status
            } else {
                TestCaseStatus::success()
            };
            let mut test_case = TestCase::new(case.name.as_str(), status);
            test_case.set_classname(suite.name.as_str());
            test_case.set_time(case.duration);
            let usage = &case.usage;
            let figures = [
                ("fuel", usage.fuel),
                ("memory-bytes", Some(usage.memory_bytes)),
                ("output-bytes", Some(usage.output_bytes)),
            ];
            for (figure, value) in figures {
                if let Some(value) = value {
                    test_case.add_property(Property::new(figure, value.to_string()));
                }
            }
            test_suite.add_test_case(test_case);
        }
        report.add_test_suite(test_suite);
    }
    report.to_string().unwrap_or_default()
}
