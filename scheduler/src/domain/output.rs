//! Output file names in Slurm's pattern syntax (`sbatch -o/-e`):
//! `%j` the job's id, `%x` its name, `%A` the array's id and `%a` the
//! task's index (for a job that is not an array task: its id and 0), `%u`
//! its tenant (the user), `%N` the node, `%n` the node's rank, `%t` the
//! task (0), `%s` the step (`batch`), `%J` as `%j`, `%%` a `%`. A number
//! between `%` and the letter pads with zeros (`%4a` → `0007`).

use super::validate::quote;

/// The longest pattern accepted.
pub const PATTERN_BYTES: usize = 4096;

/// What a pattern is expanded with.
#[derive(Debug, Clone, Default)]
pub struct Names<'a> {
    pub job: &'a str,
    pub name: &'a str,
    pub array_job: Option<&'a str>,
    pub array_task: Option<&'a str>,
    pub user: &'a str,
    pub node: &'a str,
    pub rank: u32,
}

/// Checks a pattern: not empty, no NUL, known `%` codes only.
pub fn check(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() {
        return Err("an output file name must not be empty".into());
    }
    if pattern.len() > PATTERN_BYTES {
        return Err(format!("is longer than {PATTERN_BYTES} bytes"));
    }
    if pattern.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    expand(pattern, &Names::default()).map(|_| ())
}

/// The file name a pattern makes for a job.
pub fn expand(pattern: &str, n: &Names<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() + 32);
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut width = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(*d);
            chars.next();
        }
        let width: usize = if width.is_empty() {
            0
        } else {
            width
                .parse::<usize>()
                .map_err(|_| "a padding width is too large".to_string())?
                .min(10)
        };
        let Some(code) = chars.next() else {
            return Err(format!("{} ends with a lone %: write %% for a %", quote(pattern)));
        };
        let rank = n.rank.to_string();
        let value = match code {
            '%' => "%",
            'j' | 'J' => n.job,
            'x' => n.name,
            'A' => n.array_job.unwrap_or(n.job),
            'a' => n.array_task.unwrap_or("0"),
            'u' => n.user,
            'N' => n.node,
            'n' => &rank,
            't' => "0",
            's' => "batch",
            other => {
                return Err(format!(
                    "%{other} in {} is not a pattern allot knows (%j %x %A %a %u %N %n %t %s %%)",
                    quote(pattern)
                ));
            }
        };
        let numeric = value.chars().all(|c| c.is_ascii_digit()) && !value.is_empty();
        if numeric && value.len() < width {
            out.extend(std::iter::repeat_n('0', width - value.len()));
        }
        out.push_str(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_patterns_expand_to_slurm_names() {
        let n = Names {
            job: "01a-b",
            name: "train",
            array_job: Some("01a"),
            array_task: Some("7"),
            user: "acme",
            node: "gpu-3",
            rank: 0,
        };
        assert_eq!(expand("slurm-%A_%a.out", &n).unwrap(), "slurm-01a_7.out");
        assert_eq!(
            expand("%x-%j.%u@%N.log", &n).unwrap(),
            "train-01a-b.acme@gpu-3.log"
        );
        assert_eq!(expand("out/%4a%%.txt", &n).unwrap(), "out/0007%.txt");
        let plain = Names {
            array_job: None,
            array_task: None,
            ..n
        };
        assert_eq!(expand("%A_%a", &plain).unwrap(), "01a-b_0");
    }

    #[test]
    fn unknown_codes_and_lone_percents_are_refused() {
        assert!(check("slurm-%j.out").is_ok());
        assert!(check("%q").unwrap_err().contains("%q"));
        assert!(check("out%").unwrap_err().contains("lone %"));
        assert!(check(" ").is_err());
        assert!(check("a\0b").is_err());
    }
}
