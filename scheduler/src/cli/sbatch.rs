//! `allot sbatch script.sh`: a Slurm batch script, run as it is.
//!
//! The `#SBATCH` lines are read as sbatch reads them: from the top of the
//! script until its first command (blank lines and other comments are
//! skipped); options given on the command line come after them and win.
//! Each option is either honoured (mapped to the job spec), warned about
//! once when it does not change what runs (`--mail-type`), or refused
//! naming the option and its line: never dropped in silence. The script's
//! text travels with the job (`JobSpec.script`), and the node runs it with
//! Slurm's variables set (see docs/slurm.md).

use std::collections::BTreeMap;

use allot_sdk::proto;

use super::jobfile::set_gpu;

/// Where an option was given: a script line, or the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Line(usize),
    CommandLine,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Line(n) => write!(f, "line {n}"),
            Source::CommandLine => f.write_str("the command line"),
        }
    }
}

/// One option, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    /// Its long name, without dashes (`time` for `-t`).
    pub name: &'static str,
    pub value: Option<String>,
    pub source: Source,
    /// As written (`-t 10`), for messages.
    pub written: String,
}

/// How allot treats an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Treat {
    /// Mapped to the spec.
    Honour,
    /// Does not change what runs: a warning, once.
    Warn(&'static str),
    /// Would change what runs and allot cannot do it: an error.
    Refuse(&'static str),
}

/// The options allot knows: long name, short letter, takes a value, and
/// what it does with it.
const OPTIONS: &[(&str, Option<char>, bool, Treat)] = &[
    ("job-name", Some('J'), true, Treat::Honour),
    ("time", Some('t'), true, Treat::Honour),
    ("gres", None, true, Treat::Honour),
    ("gpus", Some('G'), true, Treat::Honour),
    ("gpus-per-node", None, true, Treat::Honour),
    ("gpus-per-task", None, true, Treat::Honour),
    ("nodes", Some('N'), true, Treat::Honour),
    ("ntasks", Some('n'), true, Treat::Honour),
    ("ntasks-per-node", None, true, Treat::Honour),
    ("cpus-per-task", Some('c'), true, Treat::Honour),
    ("mem", None, true, Treat::Honour),
    ("mem-per-gpu", None, true, Treat::Honour),
    ("mem-per-cpu", None, true, Treat::Honour),
    ("chdir", Some('D'), true, Treat::Honour),
    ("export", None, true, Treat::Honour),
    ("requeue", None, false, Treat::Honour),
    ("no-requeue", None, false, Treat::Honour),
    ("account", Some('A'), true, Treat::Honour),
    ("partition", Some('p'), true, Treat::Honour),
    ("dependency", Some('d'), true, Treat::Honour),
    ("priority", None, true, Treat::Honour),
    ("wait", Some('W'), false, Treat::Honour),
    ("parsable", None, false, Treat::Honour),
    ("quiet", Some('Q'), false, Treat::Honour),
    ("output", Some('o'), true, Treat::Honour),
    ("error", Some('e'), true, Treat::Honour),
    (
        "open-mode",
        None,
        true,
        Treat::Warn("output files are always appended to (--open-mode=append)"),
    ),
    ("mail-type", None, true, Treat::Warn("allot sends no mail")),
    ("mail-user", None, true, Treat::Warn("allot sends no mail")),
    (
        "comment",
        None,
        true,
        Treat::Warn("comments are not kept; use a tag (allot submit --tag)"),
    ),
    ("cpu-bind", None, true, Treat::Warn("CPU binding is the node's")),
    (
        "gpu-bind",
        None,
        true,
        Treat::Warn("GPU binding is allot's: CUDA_VISIBLE_DEVICES"),
    ),
    ("hint", None, true, Treat::Warn("placement hints are not used")),
    (
        "distribution",
        Some('m'),
        true,
        Treat::Warn("one task runs per node"),
    ),
    ("profile", None, true, Treat::Warn("no profiling is gathered")),
    (
        "acctg-freq",
        None,
        true,
        Treat::Warn("accounting is exact per lease, not sampled"),
    ),
    (
        "verbose",
        Some('v'),
        false,
        Treat::Warn("sbatch's verbosity does not apply"),
    ),
    ("qos", Some('q'), true, Treat::Honour),
    ("array", Some('a'), true, Treat::Honour),
    ("hold", Some('H'), false, Treat::Honour),
    (
        "begin",
        Some('b'),
        true,
        Treat::Refuse("deferred starts are not supported"),
    ),
    (
        "deadline",
        None,
        true,
        Treat::Refuse("deadlines are not supported"),
    ),
    ("nodelist", Some('w'), true, Treat::Honour),
    ("exclude", Some('x'), true, Treat::Honour),
    (
        "exclusive",
        None,
        false,
        Treat::Refuse("allot does not give a job whole nodes; ask for the GPUs, CPUs and memory it needs"),
    ),
    (
        "constraint",
        Some('C'),
        true,
        Treat::Refuse("node features are node labels in allot (allot submit --node-label KEY=VALUE)"),
    ),
    (
        "licenses",
        Some('L'),
        true,
        Treat::Refuse("licenses are not supported"),
    ),
    (
        "reservation",
        None,
        true,
        Treat::Refuse("reservations are not supported"),
    ),
    (
        "signal",
        None,
        true,
        Treat::Refuse("allot stops a job with SIGTERM, its grace period, then SIGKILL"),
    ),
    ("nice", None, true, Treat::Refuse("use --priority")),
    (
        "time-min",
        None,
        true,
        Treat::Refuse("flexible time limits are not supported"),
    ),
    (
        "ntasks-per-gpu",
        None,
        true,
        Treat::Refuse("one task runs per node"),
    ),
    ("cpus-per-gpu", None, true, Treat::Refuse("give --cpus-per-task")),
    ("mincpus", None, true, Treat::Refuse("give --cpus-per-task")),
    (
        "overcommit",
        Some('O'),
        false,
        Treat::Refuse("allot does not overcommit"),
    ),
    (
        "oversubscribe",
        Some('s'),
        false,
        Treat::Refuse("allot does not oversubscribe"),
    ),
    (
        "get-user-env",
        None,
        false,
        Treat::Refuse("the job's environment is what it was submitted with (--export)"),
    ),
    (
        "uid",
        None,
        true,
        Treat::Refuse("jobs run as the node's configured user"),
    ),
    (
        "gid",
        None,
        true,
        Treat::Refuse("jobs run as the node's configured user"),
    ),
    (
        "clusters",
        Some('M'),
        true,
        Treat::Refuse("one allot server is one cluster"),
    ),
    (
        "wckey",
        None,
        true,
        Treat::Refuse("workload keys are not supported; use a tag"),
    ),
    (
        "container",
        None,
        true,
        Treat::Refuse("containers are not supported"),
    ),
    (
        "input",
        Some('i'),
        true,
        Treat::Refuse("a job's standard input is empty"),
    ),
];

fn lookup_long(name: &str) -> Option<(&'static str, bool, Treat)> {
    OPTIONS.iter().find(|o| o.0 == name).map(|o| (o.0, o.2, o.3))
}

fn lookup_short(c: char) -> Option<(&'static str, bool, Treat)> {
    OPTIONS.iter().find(|o| o.1 == Some(c)).map(|o| (o.0, o.2, o.3))
}

fn treat(name: &str) -> Treat {
    lookup_long(name).map_or(Treat::Refuse("unknown"), |o| o.2)
}

/// Splits a directive's text into words as a shell would (quotes and
/// backslashes), up to a `#` that starts a word (a comment).
pub fn words(text: &str, source: Source) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => anyhow::bail!("{source}: a quote (') is not closed"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => anyhow::bail!("{source}: a quote (\") is not closed"),
                        },
                        Some(c) => cur.push(c),
                        None => anyhow::bail!("{source}: a quote (\") is not closed"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Parses options from `words`. With `stop_at_operand` (the command line),
/// the first word that is not an option ends them: it and the rest are
/// returned (the script and its arguments). In a directive every word must
/// be an option or an option's value.
pub fn parse_options(
    words: &[String],
    source: Source,
    stop_at_operand: bool,
) -> anyhow::Result<(Vec<Opt>, Vec<String>)> {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        // The option as shown in messages, its value if given in the same
        // word, how `written` joins them, and what a value where none is
        // taken adds to the error.
        let (canon, takes, shown, inline, join, got) = if let Some(long) = w.strip_prefix("--") {
            if long.is_empty() {
                return Ok((opts, words[i + 1..].to_vec()));
            }
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let Some((canon, takes, _)) = lookup_long(name) else {
                anyhow::bail!(
                    "{source}: --{name} is not an sbatch option allot knows (see docs/slurm.md for what it supports)"
                );
            };
            (canon, takes, format!("--{name}"), inline, '=', String::new())
        } else if let Some(short) = w.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let c = chars.next().expect("not empty");
            let rest: String = chars.collect();
            let Some((canon, takes, _)) = lookup_short(c) else {
                anyhow::bail!(
                    "{source}: -{c} is not an sbatch option allot knows (see docs/slurm.md for what it supports)"
                );
            };
            let inline = (!rest.is_empty()).then(|| rest.strip_prefix('=').unwrap_or(&rest).to_string());
            (
                canon,
                takes,
                format!("-{c}"),
                inline,
                ' ',
                format!(" (got {w:?})"),
            )
        } else if stop_at_operand {
            return Ok((opts, words[i..].to_vec()));
        } else {
            anyhow::bail!("{source}: {w:?} is not an option (an #SBATCH line holds options only)");
        };
        let value = match (takes, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => {
                i += 1;
                Some(
                    words
                        .get(i)
                        .cloned()
                        .ok_or_else(|| anyhow::anyhow!("{source}: {shown} needs a value"))?,
                )
            }
            (false, Some(_)) => anyhow::bail!("{source}: {shown} takes no value{got}"),
            (false, None) => None,
        };
        let written = match &value {
            Some(v) => format!("{shown}{join}{v}"),
            None => shown,
        };
        opts.push(Opt {
            name: canon,
            value,
            source,
            written,
        });
        i += 1;
    }
    Ok((opts, Vec::new()))
}

/// The `#SBATCH` options of a script, as sbatch reads them: from the top
/// until the first line that is a command.
pub fn directives(text: &str) -> anyhow::Result<Vec<Opt>> {
    let mut opts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let source = Source::Line(n + 1);
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("#SBATCH") {
            // `#SBATCHfoo` is a comment to sbatch, not a directive.
            if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
                continue;
            }
            let w = words(rest, source)?;
            opts.extend(parse_options(&w, source, false)?.0);
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        break;
    }
    Ok(opts)
}

/// A Slurm time limit: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
/// `D-HH:MM:SS`; `0`, `UNLIMITED` and `INFINITE` are none. In ms.
pub fn parse_time(s: &str) -> Result<Option<u64>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("unlimited") || s.eq_ignore_ascii_case("infinite") {
        return Ok(None);
    }
    let bad =
        || format!("{s:?} is not a Slurm time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED)");
    let num = |p: &str| -> Result<u64, String> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 9 {
            return Err(bad());
        }
        p.parse().map_err(|_| bad())
    };
    let secs = match s.split_once('-') {
        Some((days, rest)) => {
            let d = num(days)?;
            let parts: Vec<&str> = rest.split(':').collect();
            let (h, m, sec) = match parts.as_slice() {
                [h] => (num(h)?, 0, 0),
                [h, m] => (num(h)?, num(m)?, 0),
                [h, m, sec] => (num(h)?, num(m)?, num(sec)?),
                _ => return Err(bad()),
            };
            ((d * 24 + h) * 60 + m) * 60 + sec
        }
        None => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                [m] => num(m)? * 60,
                [m, sec] => num(m)? * 60 + num(sec)?,
                [h, m, sec] => (num(h)? * 60 + num(m)?) * 60 + num(sec)?,
                _ => return Err(bad()),
            }
        }
    };
    Ok((secs > 0).then_some(secs * 1000))
}

/// A Slurm memory size: a number with an optional unit, `K`, `M` (the
/// default), `G` or `T` (powers of 1024). In MiB, rounded up.
pub fn parse_mem(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a Slurm memory size (e.g. 16G, 500M, 8000)"))?;
    let kib = match unit.to_ascii_uppercase().trim_end_matches('B') {
        "K" => n,
        "" | "M" => n.saturating_mul(1024),
        "G" => n.saturating_mul(1024 * 1024),
        "T" => n.saturating_mul(1024 * 1024 * 1024),
        _ => return Err(format!("{s:?}: the unit must be K, M, G or T")),
    };
    Ok(kib.div_ceil(1024))
}

/// A GPU ask: how many, of which model (if named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuAsk {
    pub count: u32,
    pub model: Option<String>,
}

fn count(s: &str, what: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{what}: {s:?} is not a count of 1 or more")),
    }
}

/// `--gres=gpu[:type][:count]` (several comma-separated; GPUs only).
pub fn parse_gres(s: &str) -> Result<Option<GpuAsk>, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let mut ask = None;
    for item in s.split(',') {
        let parts: Vec<&str> = item.trim().split(':').collect();
        if parts[0] != "gpu" {
            return Err(format!(
                "{item:?}: allot schedules GPUs only (gpu[:type][:count])"
            ));
        }
        if ask.is_some() {
            return Err("gpu is given twice".into());
        }
        ask = Some(match parts.as_slice() {
            [_] => GpuAsk {
                count: 1,
                model: None,
            },
            [_, n] if n.bytes().all(|b| b.is_ascii_digit()) => GpuAsk {
                count: count(n, "--gres")?,
                model: None,
            },
            [_, t] => GpuAsk {
                count: 1,
                model: Some(t.to_string()),
            },
            [_, t, n] => GpuAsk {
                count: count(n, "--gres")?,
                model: Some(t.to_string()),
            },
            _ => return Err(format!("{item:?} is not gpu[:type][:count]")),
        });
    }
    Ok(ask)
}

/// `--gpus=[type:]count` (and `--gpus-per-node`, `--gpus-per-task`).
pub fn parse_gpus(s: &str, what: &str) -> Result<GpuAsk, String> {
    match s.rsplit_once(':') {
        Some((t, n)) if !t.is_empty() => Ok(GpuAsk {
            count: count(n, what)?,
            model: Some(t.to_string()),
        }),
        _ => Ok(GpuAsk {
            count: count(s, what)?,
            model: None,
        }),
    }
}

/// What `allot sbatch` submits, and how.
#[derive(Debug)]
pub struct Batch {
    pub spec: proto::JobSpec,
    /// Printed once each, before the job is submitted.
    pub warnings: Vec<String>,
    /// `-W/--wait`: wait for the job to end; exit with its code.
    pub wait: bool,
    /// `--parsable`: print only the job id.
    pub parsable: bool,
    pub quiet: bool,
    /// `-H/--hold`: submitted held (`allot release ID` lets it start).
    pub hold: bool,
}

/// Where the submission happens: what `--export` and `SLURM_SUBMIT_*`
/// read.
pub struct Submitter {
    pub cwd: String,
    pub host: String,
    pub env: BTreeMap<String, String>,
}

/// Variables never exported to a job: allot's credentials, and what allot
/// sets itself.
fn exportable(k: &str) -> bool {
    !(k.starts_with("ALLOT_")
        || k.starts_with("SLURM_")
        || k == "CUDA_VISIBLE_DEVICES"
        || k == "NVIDIA_VISIBLE_DEVICES")
}

/// The job a script describes, with `cli` (the command line's options)
/// laid over its directives.
pub fn build(
    script_name: &str,
    text: &str,
    script_args: Vec<String>,
    cli: Vec<Opt>,
    at: &Submitter,
) -> anyhow::Result<Batch> {
    if !text.starts_with("#!") {
        anyhow::bail!(
            "{script_name}: this does not look like a batch script: its first line must start with #! and an interpreter (e.g. #!/bin/bash)"
        );
    }
    let mut all = directives(text).map_err(|e| anyhow::anyhow!("{script_name}: {e}"))?;
    all.extend(cli);
    let mut warnings = Vec::new();
    // The last of each option wins (the command line's are last).
    let mut last: BTreeMap<&'static str, Opt> = BTreeMap::new();
    for o in all {
        match treat(o.name) {
            Treat::Honour => {}
            Treat::Warn(why) => {
                let w = format!("{script_name}: {} ({}) is ignored: {why}", o.written, o.source);
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
                continue;
            }
            Treat::Refuse(why) => {
                anyhow::bail!(
                    "{script_name}: {} ({}) cannot be honoured: {why}",
                    o.written,
                    o.source
                );
            }
        }
        last.insert(o.name, o);
    }
    let value = |name: &str| last.get(name).and_then(|o| o.value.clone());
    let fail = |name: &str, msg: String| -> anyhow::Error {
        let o = &last[name];
        anyhow::anyhow!("{script_name}: {} ({}): {msg}", o.written, o.source)
    };
    let mut spec = proto::JobSpec {
        name: value("job-name")
            .unwrap_or_else(|| script_name.rsplit('/').next().unwrap_or(script_name).to_string()),
        command: script_name.rsplit('/').next().unwrap_or(script_name).to_string(),
        args: script_args,
        script: Some(text.to_string()),
        ..Default::default()
    };
    if let Some(t) = value("time") {
        spec.time_limit_ms = parse_time(&t).map_err(|e| fail("time", e))?.map(|ms| ms as i64);
    }
    // Nodes: allot runs a single-node script as Slurm does; a job over
    // several nodes is a gang of GPUs that allot places itself.
    if let Some(n) = value("nodes") {
        let ok = matches!(n.trim(), "1" | "1-1");
        if !ok {
            return Err(fail(
                "nodes",
                "allot cannot promise a number of nodes: it places a multi-node job as a gang of GPUs (allot submit --gpus N --spread); a batch script runs on one node".into(),
            ));
        }
    }
    let tasks = match (value("ntasks"), value("ntasks-per-node")) {
        (Some(_), Some(_)) => {
            return Err(fail(
                "ntasks",
                "give one of --ntasks and --ntasks-per-node".into(),
            ));
        }
        (Some(n), None) => Some(count(&n, "--ntasks").map_err(|e| fail("ntasks", e))?),
        (None, Some(n)) => Some(count(&n, "--ntasks-per-node").map_err(|e| fail("ntasks-per-node", e))?),
        (None, None) => None,
    };
    let cpus_per_task = value("cpus-per-task")
        .map(|c| count(&c, "--cpus-per-task").map_err(|e| fail("cpus-per-task", e)))
        .transpose()?;
    let mut gpu: Option<(GpuAsk, &'static str)> = None;
    for (name, parse) in [
        (
            "gres",
            &(|s: &str| parse_gres(s)) as &dyn Fn(&str) -> Result<Option<GpuAsk>, String>,
        ),
        ("gpus", &|s: &str| parse_gpus(s, "--gpus").map(Some)),
        ("gpus-per-node", &|s: &str| {
            parse_gpus(s, "--gpus-per-node").map(Some)
        }),
        ("gpus-per-task", &|s: &str| {
            parse_gpus(s, "--gpus-per-task").map(Some)
        }),
    ] {
        let Some(v) = value(name) else { continue };
        let Some(mut ask) = parse(&v).map_err(|e| fail(name, e))? else {
            continue;
        };
        if name == "gpus-per-task" {
            ask.count = ask.count.saturating_mul(tasks.unwrap_or(1));
        }
        if let Some((before, other)) = &gpu
            && before != &ask
        {
            return Err(fail(
                name,
                format!(
                    "asks for other GPUs than {} ({}); give one GPU option",
                    last[other].written, last[other].source
                ),
            ));
        }
        gpu = Some((ask, name));
    }
    let mut resources = proto::Resources::default();
    let gpus = gpu.as_ref().map_or(0, |(a, _)| a.count);
    if let Some((ask, name)) = &gpu {
        let n = i32::try_from(ask.count).map_err(|_| fail(name, "too many GPUs".into()))?;
        set_gpu(&mut resources, Some(n), None, None)?;
        if let Some(m) = &ask.model {
            spec.gpu_models.push(m.clone());
        }
    }
    let cpus = match (tasks, cpus_per_task) {
        (None, None) => None,
        (t, c) => Some(t.unwrap_or(1).saturating_mul(c.unwrap_or(1))),
    };
    if let Some(c) = cpus {
        resources.cpu_millis = i64::from(c) * 1000;
    }
    let mems: Vec<&str> = ["mem", "mem-per-gpu", "mem-per-cpu"]
        .into_iter()
        .filter(|m| last.contains_key(m))
        .collect();
    if mems.len() > 1 {
        return Err(fail(
            mems[1],
            format!(
                "give one of --mem, --mem-per-gpu and --mem-per-cpu (also {})",
                last[mems[0]].written
            ),
        ));
    }
    if let Some(&m) = mems.first() {
        let mib = parse_mem(&value(m).unwrap_or_default()).map_err(|e| fail(m, e))?;
        let total = match m {
            "mem" if mib == 0 => {
                return Err(fail(
                    m,
                    "allot needs an amount (--mem=0, all of a node's memory, is not supported)".into(),
                ));
            }
            "mem" => mib,
            "mem-per-gpu" if gpus == 0 => return Err(fail(m, "the job asks for no GPU".into())),
            "mem-per-gpu" => mib.saturating_mul(u64::from(gpus)),
            _ => mib.saturating_mul(u64::from(cpus.unwrap_or(1))),
        };
        resources.memory_mib = i64::try_from(total).map_err(|_| fail(m, "too much memory".into()))?;
    }
    spec.resources = Some(resources);
    spec.working_dir = match value("chdir") {
        Some(d) if d.starts_with('/') => d,
        Some(d) => format!("{}/{d}", at.cwd.trim_end_matches('/')),
        None => at.cwd.clone(),
    };
    if let Some(a) = value("account") {
        spec.project = a;
    }
    if let Some(p) = value("partition") {
        if p.contains(',') {
            let why = "allot runs a job in one queue; name one (see `allot queues`)";
            return Err(fail("partition", why.into()));
        }
        spec.queue = p.trim().to_string();
    }
    // Slurm's default: slurm-%j.out (slurm-%A_%a.out for an array) in the
    // working directory, stderr with stdout.
    let default_output = if last.contains_key("array") {
        "slurm-%A_%a.out"
    } else {
        "slurm-%j.out"
    };
    spec.output = value("output").unwrap_or_else(|| default_output.to_string());
    crate::domain::output::check(&spec.output).map_err(|e| fail("output", e))?;
    if let Some(e) = value("error") {
        crate::domain::output::check(&e).map_err(|why| fail("error", why))?;
        spec.error = e;
    }
    // Slurm's -w names nodes the job must have *all* of; allot runs a
    // batch job on one node, so it takes one (several are refused, not
    // read as "any of these").
    if let Some(w) = value("nodelist") {
        let nodes = hostlist(&w).map_err(|e| fail("nodelist", e))?;
        if nodes.len() > 1 {
            let why = format!(
                "{} nodes: Slurm runs the job on all of them, allot runs a batch job on one; name one, or exclude the others with -x",
                nodes.len()
            );
            return Err(fail("nodelist", why));
        }
        spec.nodes = nodes;
    }
    if let Some(x) = value("exclude") {
        spec.exclude_nodes = hostlist(&x).map_err(|e| fail("exclude", e))?;
    }
    if let Some(q) = value("qos") {
        // Checked by the server, which knows its QOS.
        spec.qos = q.trim().to_string();
    }
    if let Some(a) = value("array") {
        // Checked here for the line it is on; its size, by the server.
        let array: crate::domain::array::ArraySpec = a.parse().map_err(|e| fail("array", e))?;
        spec.array = array.to_string();
    }
    // Checked by the server, which knows the jobs it names.
    if let Some(d) = value("dependency") {
        spec.dependency = d.trim().to_string();
    }
    if let Some(p) = value("priority") {
        spec.priority = p
            .trim()
            .parse()
            .map_err(|_| fail("priority", format!("{p:?} is not a whole number")))?;
    }
    if last.contains_key("no-requeue") && last.contains_key("requeue") {
        return Err(fail("requeue", "give one of --requeue and --no-requeue".into()));
    }
    if last.contains_key("no-requeue") {
        spec.node_lost_retries = Some(0);
    }
    // --export: ALL (sbatch's default), NONE, or names (VAR or VAR=value),
    // with ALL among them to add to the whole environment.
    let export = value("export").unwrap_or_else(|| "ALL".into());
    let mut env = BTreeMap::new();
    let items: Vec<&str> = export
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.iter().any(|i| i.eq_ignore_ascii_case("all")) {
        env.extend(
            at.env
                .iter()
                .filter(|(k, _)| exportable(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    for item in items {
        if item.eq_ignore_ascii_case("all") || item.eq_ignore_ascii_case("none") {
            continue;
        }
        match item.split_once('=') {
            Some((k, v)) => {
                env.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Some(v) = at.env.get(item) {
                    env.insert(item.to_string(), v.clone());
                }
            }
        }
    }
    env.retain(|k, _| exportable(k));
    env.insert("SLURM_SUBMIT_DIR".into(), at.cwd.clone());
    env.insert("SLURM_SUBMIT_HOST".into(), at.host.clone());
    spec.env = env.into_iter().collect();
    // The script's body: what it calls that allot does not provide.
    let body_start = text
        .lines()
        .position(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        })
        .unwrap_or(0);
    for (n, line) in text.lines().enumerate().skip(body_start) {
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "srun" | "sbatch" | "scontrol" | "squeue" | "salloc") {
            warnings.push(format!(
                "{script_name}: line {} runs {first}, which allot does not provide: the script runs once on its node (see docs/slurm.md)",
                n + 1
            ));
            break;
        }
    }
    Ok(Batch {
        spec,
        warnings,
        wait: last.contains_key("wait"),
        parsable: last.contains_key("parsable"),
        quiet: last.contains_key("quiet"),
        hold: last.contains_key("hold"),
    })
}

/// Most nodes a host list may expand to.
const HOSTLIST_MAX: usize = 1000;

/// Expands a Slurm host list: `gpu[01-03,7],login1` → gpu01, gpu02, gpu03,
/// gpu7, login1 (zero padding kept). A file name (with a `/`) is refused.
pub fn hostlist(s: &str) -> Result<Vec<String>, String> {
    let s = s.trim();
    if s.contains('/') {
        return Err("a file of node names is not read; list them (gpu[01-04])".into());
    }
    // Split at commas outside brackets.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("{s:?} is not a host list (brackets do not match)"));
        }
    }
    if depth != 0 {
        return Err(format!("{s:?} is not a host list (a [ is not closed)"));
    }
    parts.push(&s[start..]);
    let mut out = Vec::new();
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let Some(open) = part.find('[') else {
            out.push(part.to_string());
            continue;
        };
        let close = part
            .find(']')
            .ok_or_else(|| format!("{part:?}: a [ is not closed"))?;
        let (prefix, ranges, suffix) = (&part[..open], &part[open + 1..close], &part[close + 1..]);
        for r in ranges.split(',') {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let (lo, hi): (u64, u64) = match (a.trim().parse(), b.trim().parse()) {
                (Ok(lo), Ok(hi)) if lo <= hi => (lo, hi),
                _ => return Err(format!("{part:?}: {r:?} is not a range of numbers")),
            };
            if hi - lo >= HOSTLIST_MAX as u64 {
                return Err(format!("{part:?} names more than {HOSTLIST_MAX} nodes"));
            }
            let width = a.trim().len();
            for n in lo..=hi {
                out.push(format!("{prefix}{n:0width$}{suffix}"));
            }
        }
        if out.len() > HOSTLIST_MAX {
            return Err(format!("{s:?} names more than {HOSTLIST_MAX} nodes"));
        }
    }
    if out.is_empty() {
        return Err("no node named".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Submitter {
        Submitter {
            cwd: "/home/ana/proj".into(),
            host: "login1".into(),
            env: BTreeMap::from([
                ("PATH".to_string(), "/usr/bin:/bin".to_string()),
                ("CONDA_PREFIX".to_string(), "/opt/conda".to_string()),
                ("ALLOT_TOKEN".to_string(), "secret".to_string()),
                ("SLURM_JOB_ID".to_string(), "77".to_string()),
            ]),
        }
    }

    fn cli(words: &[&str]) -> Vec<Opt> {
        let w: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        parse_options(&w, Source::CommandLine, false).unwrap().0
    }

    fn built(text: &str) -> anyhow::Result<Batch> {
        build("train.sh", text, vec![], Vec::new(), &at())
    }

    /// A script as HPC centres' guides write them (directives with both
    /// option styles, a comment after one, blank lines between).
    const TRAIN: &str = "#!/bin/bash
#SBATCH --job-name=resnet50
#SBATCH -t 1-02:30:00
#SBATCH --gres=gpu:a100:2   # two A100s

#SBATCH -c 8
#SBATCH --mem=64G
#SBATCH --account=vision
#SBATCH --export=ALL,SEED=42
# a plain comment
module load cuda
python train.py --epochs 90
#SBATCH --time=5   (after the first command: sbatch ignores it)
";

    #[test]
    fn a_real_script_maps_to_the_spec() {
        let b = built(TRAIN).unwrap();
        let s = &b.spec;
        assert_eq!(s.name, "resnet50");
        assert_eq!(s.command, "train.sh");
        assert_eq!(s.script.as_deref(), Some(TRAIN));
        assert_eq!(s.time_limit_ms, Some(((24 + 2) * 3600 + 30 * 60) * 1000));
        let r = s.resources.as_ref().unwrap();
        assert_eq!(r.gpu, Some(proto::resources::Gpu::Gpus(2)));
        assert_eq!(s.gpu_models, ["a100"]);
        assert_eq!((r.cpu_millis, r.memory_mib), (8000, 64 * 1024));
        assert_eq!(s.project, "vision");
        assert_eq!(s.working_dir, "/home/ana/proj");
        // The whole environment but allot's credentials and Slurm's own,
        // with SEED added and where it was submitted from.
        let env: BTreeMap<_, _> = s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            env,
            BTreeMap::from([
                ("CONDA_PREFIX", "/opt/conda"),
                ("PATH", "/usr/bin:/bin"),
                ("SEED", "42"),
                ("SLURM_SUBMIT_DIR", "/home/ana/proj"),
                ("SLURM_SUBMIT_HOST", "login1"),
            ])
        );
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        assert!(!b.wait && !b.parsable);
    }

    #[test]
    fn the_command_line_wins_over_the_script() {
        let b = build(
            "train.sh",
            TRAIN,
            vec!["--lr".into(), "0.1".into()],
            cli(&["-t", "45", "--job-name", "short", "-G", "1"]),
            &at(),
        );
        // --gres on line 4 and -G on the command line ask for different
        // GPUs: the command line's -G replaces nothing, so it is refused.
        let err = b.unwrap_err().to_string();
        assert!(
            err.contains("-G 1 (the command line)") && err.contains("line 4"),
            "{err}"
        );
        let b = build(
            "train.sh",
            TRAIN,
            vec!["--lr".into(), "0.1".into()],
            cli(&["-t", "45", "--job-name", "short", "--gres=gpu:1"]),
            &at(),
        )
        .unwrap();
        assert_eq!(b.spec.name, "short");
        assert_eq!(b.spec.time_limit_ms, Some(45 * 60 * 1000));
        assert_eq!(b.spec.args, ["--lr", "0.1"]);
        assert_eq!(b.spec.gpu_models, Vec::<String>::new());
        assert_eq!(
            b.spec.resources.unwrap().gpu,
            Some(proto::resources::Gpu::Gpus(1))
        );
    }

    #[test]
    fn every_slurm_time_format_reads() {
        for (s, ms) in [
            ("30", Some(30 * 60_000)),
            ("30:15", Some(30 * 60_000 + 15_000)),
            ("2:00:00", Some(2 * 3_600_000)),
            ("1-0", Some(24 * 3_600_000)),
            ("1-12", Some(36 * 3_600_000)),
            ("2-03:04", Some((2 * 24 + 3) * 3_600_000 + 4 * 60_000)),
            ("0-00:00:05", Some(5_000)),
            ("UNLIMITED", None),
            ("infinite", None),
            ("0", None),
        ] {
            assert_eq!(parse_time(s), Ok(ms), "{s}");
        }
        for bad in ["", "1h", "1:2:3:4", "-5", "1-", "a:b", "1-2:3:4:5", "99999999999"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gres_gpus_and_memory_read_as_slurm_writes_them() {
        let ask = |count, model: Option<&str>| GpuAsk {
            count,
            model: model.map(String::from),
        };
        assert_eq!(parse_gres("gpu"), Ok(Some(ask(1, None))));
        assert_eq!(parse_gres("gpu:4"), Ok(Some(ask(4, None))));
        assert_eq!(parse_gres("gpu:v100:2"), Ok(Some(ask(2, Some("v100")))));
        assert_eq!(parse_gres("gpu:tesla"), Ok(Some(ask(1, Some("tesla")))));
        assert_eq!(parse_gres("none"), Ok(None));
        for bad in ["mps:100", "gpu:0", "gpu:a:b:c", "gpu:1,gpu:2", "gpu:v100:-1"] {
            assert!(parse_gres(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_gpus("3", "--gpus"), Ok(ask(3, None)));
        assert_eq!(parse_gpus("h100:8", "--gpus"), Ok(ask(8, Some("h100"))));
        assert!(parse_gpus("0", "--gpus").is_err());
        assert_eq!(parse_mem("16G"), Ok(16 * 1024));
        assert_eq!(parse_mem("8000"), Ok(8000));
        assert_eq!(parse_mem("512M"), Ok(512));
        assert_eq!(parse_mem("1536K"), Ok(2));
        assert_eq!(parse_mem("2T"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_mem("4GB"), Ok(4 * 1024));
        assert!(parse_mem("lots").is_err() && parse_mem("4X").is_err());
    }

    #[test]
    fn tasks_cpus_and_memory_per_unit_multiply_out() {
        let b = built("#!/bin/sh\n#SBATCH --ntasks-per-node=4 --cpus-per-task=2 --mem-per-cpu=1G\ntrue\n")
            .unwrap();
        let r = b.spec.resources.unwrap();
        assert_eq!((r.cpu_millis, r.memory_mib), (8000, 8 * 1024));
        let b = built("#!/bin/sh\n#SBATCH --gpus-per-node=2\n#SBATCH --mem-per-gpu=20G\ntrue\n").unwrap();
        let r = b.spec.resources.unwrap();
        assert_eq!(
            (r.gpu, r.memory_mib),
            (Some(proto::resources::Gpu::Gpus(2)), 40 * 1024)
        );
        let b = built("#!/bin/sh\n#SBATCH -n 2 --gpus-per-task=1\ntrue\n").unwrap();
        assert_eq!(
            b.spec.resources.unwrap().gpu,
            Some(proto::resources::Gpu::Gpus(2))
        );
    }

    #[test]
    fn what_allot_cannot_honour_is_refused_naming_the_line() {
        for (line, expect) in [
            (
                "#SBATCH -p gpu,cpu",
                "-p gpu,cpu (line 2): allot runs a job in one queue",
            ),
            (
                "#SBATCH -N 2",
                "-N 2 (line 2): allot cannot promise a number of nodes",
            ),
            ("#SBATCH --mem=0", "--mem=0 (line 2): allot needs an amount"),
            (
                "#SBATCH --time=1h",
                "--time=1h (line 2): \"1h\" is not a Slurm time",
            ),
            (
                "#SBATCH --gres=gpu:0",
                "--gres=gpu:0 (line 2): --gres: \"0\" is not a count",
            ),
            (
                "#SBATCH --frobnicate",
                "line 2: --frobnicate is not an sbatch option",
            ),
            ("#SBATCH -X", "line 2: -X is not an sbatch option"),
            ("#SBATCH --time", "line 2: --time needs a value"),
            ("#SBATCH --wait=yes", "line 2: --wait takes no value"),
            ("#SBATCH train.py", "line 2: \"train.py\" is not an option"),
            (
                "#SBATCH --job-name='unclosed",
                "line 2: a quote (') is not closed",
            ),
            (
                "#SBATCH --mem=4G --mem-per-cpu=1G",
                "give one of --mem, --mem-per-gpu and --mem-per-cpu",
            ),
            (
                "#SBATCH --mem-per-gpu=4G",
                "--mem-per-gpu=4G (line 2): the job asks for no GPU",
            ),
            ("#SBATCH --exclusive", "--exclusive (line 2) cannot be honoured"),
        ] {
            let err = built(&format!("#!/bin/bash\n{line}\necho hi\n"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("train.sh: "), "{line}: {err}");
            assert!(err.contains(expect), "{line}: {err}");
        }
        let err = built("echo no shebang\n").unwrap_err().to_string();
        assert!(err.contains("its first line must start with #!"), "{err}");
    }

    #[test]
    fn what_does_not_change_what_runs_is_warned_about_once() {
        let b = built(
            "#!/bin/bash\n#SBATCH --mail-type=END,FAIL\n#SBATCH --mail-user=ana@example.org\n#SBATCH -o slurm-%j.out\nsrun python train.py\n",
        )
        .unwrap();
        assert_eq!(b.warnings.len(), 3, "{:#?}", b.warnings);
        assert!(b.warnings[0].contains("--mail-type=END,FAIL (line 2) is ignored: allot sends no mail"));
        assert!(b.warnings[2].contains("line 5 runs srun, which allot does not provide"));
        assert_eq!(b.spec.output, "slurm-%j.out", "-o is honoured");
    }

    #[test]
    fn arrays_and_output_files_as_slurm_names_them() {
        let b = built("#!/bin/sh\n#SBATCH --array=0-9%2\n#SBATCH -e err-%A_%a.txt\ntrue\n").unwrap();
        assert_eq!(b.spec.array, "0-9%2");
        assert_eq!(b.spec.output, "slurm-%A_%a.out", "Slurm's default for an array");
        assert_eq!(b.spec.error, "err-%A_%a.txt");
        let b = built("#!/bin/sh\n#SBATCH --qos=high\ntrue\n").unwrap();
        assert_eq!(b.spec.qos, "high", "--qos is the server's to check");
        let b = built("#!/bin/sh\n#SBATCH -w gpu07 -x gpu[01-03,9],login1\ntrue\n").unwrap();
        assert_eq!(b.spec.nodes, ["gpu07"]);
        assert_eq!(
            b.spec.exclude_nodes,
            ["gpu01", "gpu02", "gpu03", "gpu9", "login1"]
        );
        let err = built("#!/bin/sh\n#SBATCH --nodelist=gpu[1-2]\ntrue\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--nodelist=gpu[1-2] (line 2): 2 nodes: Slurm runs the job on all of them"),
            "{err}"
        );
        for bad in ["gpu[1-", "gpu[3-1]", "/etc/hosts", "n[0-5000]"] {
            assert!(hostlist(bad).is_err(), "{bad}");
        }
        let b = built("#!/bin/sh\ntrue\n").unwrap();
        assert_eq!(
            (b.spec.output.as_str(), b.spec.error.as_str()),
            ("slurm-%j.out", "")
        );
        for (line, expect) in [
            ("#SBATCH -a 5-1", "-a 5-1 (line 2): \"5-1\": 5 is after 1"),
            ("#SBATCH --array=0-10:0", "step must be at least 1"),
            ("#SBATCH -o out-%q.txt", "-o out-%q.txt (line 2): %q in"),
            ("#SBATCH --error=e%", "lone %"),
        ] {
            let err = built(&format!("#!/bin/bash\n{line}\necho hi\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{line}: {err}");
        }
    }

    #[test]
    fn export_none_and_named_variables_and_no_requeue() {
        let b = built("#!/bin/sh\n#SBATCH --export=NONE\ntrue\n").unwrap();
        let keys: Vec<&str> = b.spec.env.keys().map(String::as_str).collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, ["SLURM_SUBMIT_DIR", "SLURM_SUBMIT_HOST"]);
        let b =
            built("#!/bin/sh\n#SBATCH --export=CONDA_PREFIX,X=1,ALLOT_TOKEN --no-requeue\ntrue\n").unwrap();
        assert_eq!(
            b.spec.env.get("CONDA_PREFIX").map(String::as_str),
            Some("/opt/conda")
        );
        assert_eq!(b.spec.env.get("X").map(String::as_str), Some("1"));
        assert!(!b.spec.env.contains_key("PATH") && !b.spec.env.contains_key("ALLOT_TOKEN"));
        assert_eq!(b.spec.node_lost_retries, Some(0));
    }

    #[test]
    fn the_command_line_stops_at_the_script() {
        let w: Vec<String> = ["-t", "5", "--wait", "run.sh", "-t", "x"]
            .map(String::from)
            .into();
        let (opts, rest) = parse_options(&w, Source::CommandLine, true).unwrap();
        assert_eq!(opts.iter().map(|o| o.name).collect::<Vec<_>>(), ["time", "wait"]);
        assert_eq!(rest, ["run.sh", "-t", "x"]);
        assert_eq!(
            words(r#"--job-name "a b" -t 5 # note"#, Source::Line(1)).unwrap(),
            ["--job-name", "a b", "-t", "5"]
        );
    }

    #[test]
    fn a_partition_is_the_queue_and_the_command_line_wins() {
        let b = built("#!/bin/sh\n#SBATCH -p gpu\n#SBATCH --partition=short\ntrue\n").unwrap();
        assert_eq!(b.spec.queue, "short", "the last line wins");
        let b = built("#!/bin/sh\ntrue\n").unwrap();
        assert_eq!(b.spec.queue, "", "none named: the server's default queue");
    }
}
