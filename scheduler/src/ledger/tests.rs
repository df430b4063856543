//! The ledger on real sled files.

use std::collections::BTreeMap;

use super::*;
use crate::domain::{DeviceGrant, LeaseState, MiB, Share};

fn job(tenant: &str, state: JobState) -> Job {
    let mut j = Job::for_tests(JobId::new_v7());
    j.spec.tenant = tenant.parse().unwrap();
    j.state = state;
    j
}

fn lease(j: &Job) -> Lease {
    Lease {
        id: LeaseId::new_v7(),
        job_id: j.id,
        attempt: 1,
        tenant: j.spec.tenant.clone(),
        project: j.spec.project.clone(),
        node: "n1".parse().unwrap(),
        device: DeviceGrant {
            gpu_uuid: "GPU-1".into(),
            device_uuid: "GPU-1".into(),
            gpu_index: 0,
            gpu_model: "H100-80GB".into(),
            mig_profile: None,
            share: Share::new(1, 4).unwrap(),
            gpu_memory: MiB(20_480),
        },
        state: LeaseState::Reserved,
        reserved_at: UnixMillis(10),
        started_at: None,
        ended_at: None,
        end_reason: None,
        rate: None,
        tags: BTreeMap::new(),
    }
}

#[tokio::test]
async fn jobs_and_leases_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let j = job("a", JobState::Starting);
    let l = lease(&j);
    {
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.put_job(&j, &[&l]).unwrap();
        ledger.flush().await.unwrap();
    }
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.get_job(&j.id).unwrap(), Some(j.clone()));
    assert_eq!(ledger.leases_of(&j.id).unwrap(), vec![l.clone()]);
    assert_eq!(ledger.get_lease(&l.id).unwrap(), Some(l));
    assert_eq!(ledger.active_jobs().unwrap(), vec![j]);
}

#[tokio::test]
async fn final_jobs_leave_the_active_index() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut j = job("a", JobState::Running);
    ledger.put_job(&j, &[]).unwrap();
    assert_eq!(ledger.active_jobs().unwrap().len(), 1);
    j.state = JobState::Succeeded;
    ledger.put_job(&j, &[]).unwrap();
    assert!(ledger.active_jobs().unwrap().is_empty());
    assert_eq!(ledger.job_count(), 1);
}

#[tokio::test]
async fn listing_filters_by_tenant_and_state_and_pages_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut a_ids = Vec::new();
    for i in 0..5 {
        let j = job(
            "a",
            if i % 2 == 0 {
                JobState::Pending
            } else {
                JobState::Failed
            },
        );
        ledger.put_job(&j, &[]).unwrap();
        a_ids.push(j.id);
        // A tenant whose name is a prefix of the other must not leak in.
        ledger.put_job(&job("ab", JobState::Pending), &[]).unwrap();
    }
    let filter = JobFilter {
        tenant: Some("a".parse().unwrap()),
        states: vec![],
    };
    let (page, next) = ledger.list_jobs(&filter, None, 2).unwrap();
    assert_eq!(page.iter().map(|j| j.id).collect::<Vec<_>>(), a_ids[..2]);
    let (page2, next2) = ledger.list_jobs(&filter, next, 2).unwrap();
    assert_eq!(page2.iter().map(|j| j.id).collect::<Vec<_>>(), a_ids[2..4]);
    let (page3, next3) = ledger.list_jobs(&filter, next2, 2).unwrap();
    assert_eq!(page3.iter().map(|j| j.id).collect::<Vec<_>>(), a_ids[4..]);
    assert_eq!(next3, None);

    let failed = JobFilter {
        tenant: Some("a".parse().unwrap()),
        states: vec![JobState::Failed],
    };
    let (page, _) = ledger.list_jobs(&failed, None, 100).unwrap();
    assert_eq!(
        page.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a_ids[1], a_ids[3]]
    );
    let (all, _) = ledger.list_jobs(&JobFilter::default(), None, 100).unwrap();
    assert_eq!(all.len(), 10);
}

#[tokio::test]
async fn another_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("ledger")).unwrap();
        db.open_tree("meta").unwrap().insert("schema", "999").unwrap();
        db.flush().unwrap();
    }
    let err = Ledger::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("schema version 999"), "{err}");
}

#[tokio::test]
async fn tokens_tenants_and_drains_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let t = TenantRecord {
        name: "a".parse().unwrap(),
        created_at: UnixMillis(5),
    };
    ledger.put_tenant(&t).unwrap();
    assert_eq!(ledger.get_tenant("a").unwrap(), Some(t.clone()));
    assert_eq!(ledger.tenants().unwrap(), vec![t]);
    let rec = TokenRecord {
        id: "abc".into(),
        role: Role::Tenant("a".parse().unwrap()),
        description: "d".into(),
        created_at: UnixMillis(6),
    };
    ledger.put_token(&[7; 32], &rec).unwrap();
    assert_eq!(ledger.tokens().unwrap(), vec![([7; 32], rec)]);
    assert!(ledger.remove_token(&[7; 32]).unwrap());
    assert!(!ledger.remove_token(&[7; 32]).unwrap());
    let n: NodeName = "n1".parse().unwrap();
    ledger.put_drain(&n, "maintenance").unwrap();
    assert_eq!(
        ledger.drains().unwrap(),
        vec![(n.clone(), "maintenance".to_string())]
    );
    ledger.remove_drain(&n).unwrap();
    assert!(ledger.drains().unwrap().is_empty());
}

/// Regression: `jobs_and_leases_survive_a_reopen` failed once in a full
/// suite run on a loaded machine: sled's flusher can hold the file lock for a
/// moment after the last handle goes ("could not acquire lock"). Opening now
/// waits for the lock; this loop of close-and-reopen must never fail. (The
/// race did not reproduce on demand, so this test may pass without the fix.)
#[tokio::test]
async fn regression_reopening_at_once_waits_for_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..20 {
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.put_job(&job("a", JobState::Pending), &[]).unwrap();
        ledger.flush().await.unwrap();
        drop(ledger);
    }
    assert_eq!(Ledger::open(dir.path()).unwrap().job_count(), 20);
}
