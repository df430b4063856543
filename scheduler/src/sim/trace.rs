//! The Alibaba GPU-sharing trace (cluster-trace-gpu-v2023, "openb"): node
//! and pod lists as CSV.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use crate::domain::{GpuRequest, MiB, MilliCpu, NodeName, Resources, Share};
use crate::placement::{Gpu, NodeInventory, Request};

/// One pod of a pod list.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub name: String,
    pub request: Request,
    /// GPU asked for, in thousandths of a GPU (`gpu_milli × num_gpu`).
    pub gpu_milli: u64,
    /// Seconds, where the list has them.
    pub creation: Option<u64>,
    pub deletion: Option<u64>,
    pub scheduled: Option<u64>,
    /// Its QoS class (`LS`, `BE`, …), where the list has one.
    pub qos: Option<String>,
}

impl Pod {
    /// How long it ran, in seconds: from when it was scheduled (else
    /// created) to its deletion; at least 1.
    pub fn run_s(&self) -> u64 {
        let created = self.creation.unwrap_or(0);
        self.deletion
            .unwrap_or(created)
            .saturating_sub(self.scheduled.unwrap_or(created))
            .max(1)
    }
}

/// Nominal memory of the trace's GPU models; the trace gives none and only
/// fractional memory caps read it (always as the same share of it).
const TRACE_GPU_MEMORY: MiB = MiB(32 * 1024);

fn read_csv(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} is empty", path.display()))?
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(|s| s.trim().to_string()).collect())
        .collect();
    Ok((header, rows))
}

struct Columns(HashMap<String, usize>);

impl Columns {
    fn new(header: &[String], path: &Path, required: &[&str]) -> anyhow::Result<Columns> {
        let map: HashMap<String, usize> = header.iter().enumerate().map(|(i, h)| (h.clone(), i)).collect();
        for r in required {
            if !map.contains_key(*r) {
                anyhow::bail!(
                    "{}: missing column {r:?} (have {})",
                    path.display(),
                    header.join(",")
                );
            }
        }
        Ok(Columns(map))
    }

    fn get<'a>(&self, row: &'a [String], col: &str) -> Option<&'a str> {
        self.0.get(col).and_then(|&i| row.get(i)).map(String::as_str)
    }

    fn num(&self, row: &[String], col: &str, line: usize) -> anyhow::Result<u64> {
        let v = self.get(row, col).unwrap_or("");
        v.parse()
            .map_err(|_| anyhow::anyhow!("line {line}: column {col} is {v:?}, not a whole number"))
    }
}

/// Reads `openb_node_list_*.csv` (`sn,cpu_milli,memory_mib,gpu,model`).
pub fn read_nodes(path: &Path) -> anyhow::Result<Vec<NodeInventory>> {
    let (header, rows) = read_csv(path)?;
    let cols = Columns::new(&header, path, &["sn", "cpu_milli", "memory_mib", "gpu", "model"])?;
    let mut nodes = Vec::with_capacity(rows.len());
    for (k, row) in rows.iter().enumerate() {
        let line = k + 2;
        let name = cols.get(row, "sn").unwrap_or("").to_ascii_lowercase();
        let name: NodeName = name.parse().map_err(|e| anyhow::anyhow!("line {line}: {e}"))?;
        let gpus = cols.num(row, "gpu", line)? as u32;
        let model = cols.get(row, "model").unwrap_or("").to_string();
        nodes.push(NodeInventory {
            gpus: (0..gpus)
                .map(|i| Gpu::whole(i, format!("{name}-gpu{i}"), model.clone(), TRACE_GPU_MEMORY))
                .collect(),
            name,
            labels: Default::default(),
            cpu: MilliCpu(cols.num(row, "cpu_milli", line)?),
            memory: MiB(cols.num(row, "memory_mib", line)?),
        });
    }
    Ok(nodes)
}

/// Reads `openb_pod_list_*.csv`, sorted by pod name.
pub fn read_pods(path: &Path) -> anyhow::Result<Vec<Pod>> {
    let (header, rows) = read_csv(path)?;
    let cols = Columns::new(
        &header,
        path,
        &["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"],
    )?;
    let mut pods = Vec::with_capacity(rows.len());
    for (k, row) in rows.iter().enumerate() {
        let line = k + 2;
        let num_gpu = cols.num(row, "num_gpu", line)? as u32;
        let milli = cols
            .num(row, "gpu_milli", line)?
            .clamp(if num_gpu > 0 { 1 } else { 0 }, 1000);
        let gpu = match (num_gpu, milli) {
            (0, _) => GpuRequest::None,
            (1, m) if m < 1000 => GpuRequest::Fraction {
                share: Share::new(m, 1000).expect("non-zero denominator"),
                memory: None,
            },
            (n, _) => GpuRequest::Whole(NonZeroU32::new(n).expect("n > 0")),
        };
        let mut request = Request::resources(&Resources {
            gpu,
            cpu: MilliCpu(cols.num(row, "cpu_milli", line)?),
            memory: MiB(cols.num(row, "memory_mib", line)?),
        });
        if num_gpu > 0 {
            request.gpu_models = cols
                .get(row, "gpu_spec")
                .unwrap_or("")
                .split('|')
                .map(str::trim)
                .filter(|m| !m.is_empty() && *m != "nan")
                .map(String::from)
                .collect();
        }
        let time = |col: &str| cols.get(row, col).and_then(|v| v.parse::<u64>().ok());
        pods.push(Pod {
            name: cols.get(row, "name").unwrap_or("").to_string(),
            gpu_milli: milli * num_gpu as u64,
            request,
            creation: time("creation_time"),
            deletion: time("deletion_time"),
            scheduled: time("scheduled_time"),
            qos: cols
                .get(row, "qos")
                .filter(|q| !q.is_empty() && *q != "nan")
                .map(String::from),
        });
    }
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pods)
}
