//! Leases in the ledger: the lease records and their indexes (by job, open,
//! by hour), the hourly roll-ups, usage reads and the self-check.

use super::*;

impl Ledger {
    /// Rebuilds the open-lease set, the hour index and the roll-ups from the
    /// leases (a data dir from before they existed, or a changed layout).
    pub fn rebuild_rollups(&self) -> Result<()> {
        let started = std::time::Instant::now();
        self.meta.remove(ROLLUPS_KEY)?;
        for tree in [
            &self.leases_open,
            &self.lease_hours,
            &self.rollups,
            &self.unrolled,
        ] {
            tree.clear()?;
        }
        let mut sums: BTreeMap<Vec<u8>, Tally> = BTreeMap::new();
        let mut n = 0usize;
        for v in self.leases.iter().values() {
            let lease: Lease = decode("leases", &v?)?;
            n += 1;
            if lease.state != LeaseState::Closed {
                self.leases_open.insert(lease.id.as_bytes(), &[])?;
                continue;
            }
            let closing = Closing::of(&lease);
            for (part, _) in &closing.parts {
                self.lease_hours
                    .insert(hour_lease_key(part.hour, &lease.id), &[])?;
            }
            for (k, tally) in closing.additions() {
                sums.entry(k).or_default().add(&tally);
            }
        }
        for (k, t) in &sums {
            self.rollups.insert(k.as_slice(), encode_tally(t).as_slice())?;
        }
        self.meta.insert(ROLLUPS_KEY, ROLLUPS_VERSION)?;
        self.db.flush()?;
        tracing::info!(
            leases = n,
            cells = sums.len(),
            ms = started.elapsed().as_millis() as u64,
            "usage roll-ups rebuilt"
        );
        Ok(())
    }

    pub fn get_lease(&self, id: &LeaseId) -> Result<Option<Lease>> {
        self.leases
            .get(id.as_bytes())?
            .map(|b| decode("leases", &b))
            .transpose()
    }

    /// The leases of a job, oldest first.
    pub fn leases_of(&self, job: &JobId) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for kv in self.leases_by_job.scan_prefix(job.as_bytes()) {
            let (k, _) = kv?;
            if let Some(id) = LeaseId::from_slice(&k[16..])
                && let Some(l) = self.get_lease(&id)?
            {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Every lease, oldest first.
    pub fn all_leases(&self) -> Result<Vec<Lease>> {
        self.leases
            .iter()
            .values()
            .map(|b| decode("leases", &b?))
            .collect()
    }

    /// One page of the leases `keep` accepts, oldest first, after `after`;
    /// with the id to continue after if there may be more.
    pub fn leases_page(
        &self,
        after: Option<LeaseId>,
        limit: usize,
        keep: impl Fn(&Lease) -> bool,
    ) -> Result<(Vec<Lease>, Option<LeaseId>)> {
        let iter = match after {
            Some(a) => {
                let mut k = a.as_bytes().to_vec();
                k.push(0);
                self.leases.range(k..)
            }
            None => self.leases.iter(),
        };
        let mut out = Vec::new();
        let mut last = None;
        for kv in iter {
            if out.len() >= limit {
                break;
            }
            let (_, b) = kv?;
            let lease: Lease = decode("leases", &b)?;
            last = Some(lease.id);
            if keep(&lease) {
                out.push(lease);
            }
        }
        let more = out.len() >= limit;
        Ok((out, if more { last } else { None }))
    }

    /// Adds the closed leases marked by `put_job` to the roll-ups and clears
    /// their marks, in one transaction: one read-modify-write per cell for
    /// however many leases closed. The engine calls it once per turn, before
    /// the turn's flush. Returns how many leases it rolled up.
    pub fn roll_up(&self) -> Result<usize> {
        let _one = self.rolling.lock().unwrap_or_else(|e| e.into_inner());
        // Leases waiting for a pricing plugin's prices wait here too.
        let marked: Vec<Lease> = self
            .unrolled_leases()?
            .into_iter()
            .filter(|l| l.plugin_prices.as_ref().is_none_or(|p| !p.pending))
            .collect();
        if marked.is_empty() {
            return Ok(0);
        }
        let mut sums: BTreeMap<Vec<u8>, Tally> = BTreeMap::new();
        for lease in &marked {
            for (k, tally) in Closing::of(lease).additions() {
                sums.entry(k).or_default().add(&tally);
            }
        }
        // The cells' new values are worked out before the transaction, which
        // then only writes: roll-ups are written here alone, one at a time
        // (`rolling`), so nothing changes them in between.
        let mut cells = Vec::with_capacity(sums.len());
        for (k, t) in sums {
            let mut sum = match self.rollups.get(&k)? {
                Some(b) => decode_tally(&b).ok_or(LedgerError::CorruptKey { tree: "rollups" })?,
                None => Tally::default(),
            };
            sum.add(&t);
            cells.push((k, encode_tally(&sum)));
        }
        let result: Result<(), TransactionError<&'static str>> =
            (&self.rollups, &self.unrolled).transaction(|(rollups, unrolled)| {
                for (k, v) in &cells {
                    rollups.insert(k.as_slice(), v.as_slice())?;
                }
                for l in &marked {
                    unrolled.remove(l.id.as_bytes())?;
                }
                Ok(())
            });
        committed(result).map(|()| marked.len())
    }

    /// Records a pricing plugin's prices for a closed lease still waiting
    /// for them (and so not rolled up yet: `roll_up` skips it until then).
    pub fn set_plugin_prices(&self, id: &LeaseId, prices: &PluginPrices) -> Result<()> {
        let result: Result<(), TransactionError<&'static str>> =
            (&self.leases, &self.unrolled).transaction(|(leases, unrolled)| {
                let Some(bytes) = leases.get(id.as_bytes())? else {
                    return Err(ConflictableTransactionError::Abort("no such lease"));
                };
                let mut lease: Lease = serde_json::from_slice(&bytes)
                    .map_err(|_| ConflictableTransactionError::Abort("corrupt lease"))?;
                if unrolled.get(id.as_bytes())?.is_none()
                    || !lease.plugin_prices.as_ref().is_some_and(|p| p.pending)
                {
                    return Err(ConflictableTransactionError::Abort(
                        "the lease is not waiting for prices",
                    ));
                }
                lease.plugin_prices = Some(prices.clone());
                leases.insert(id.as_bytes(), encode(&lease))?;
                Ok(())
            });
        committed(result)
    }

    /// Closed leases not rolled up yet.
    pub fn unrolled_leases(&self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for k in self.unrolled.iter().keys() {
            if let Some(id) = LeaseId::from_slice(&k?)
                && let Some(l) = self.get_lease(&id)?
            {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Leases not closed yet.
    pub fn open_leases(&self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for k in self.leases_open.iter().keys() {
            if let Some(id) = LeaseId::from_slice(&k?)
                && let Some(l) = self.get_lease(&id)?
            {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Closed leases that overlap the UTC hours `[from_hour, to_hour]`, each once.
    pub fn closed_leases_in_hours(&self, from_hour: UnixMillis, to_hour: UnixMillis) -> Result<Vec<Lease>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let start = from_hour.0.to_be_bytes();
        let end = to_hour.0.saturating_add(1).to_be_bytes();
        for k in self.lease_hours.range(start..end).keys() {
            let k = k?;
            if let Some(id) = LeaseId::from_slice(&k[8..])
                && seen.insert(id)
                && let Some(l) = self.get_lease(&id)?
            {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Usage over a window, from the roll-ups where the grouping allows and
    /// from the window's own leases where it does not; open leases count up
    /// to `now`. Never a scan of every lease.
    pub fn usage(&self, q: &UsageQuery, now: UnixMillis) -> Result<Vec<UsageRow>> {
        // Open leases and closed ones not rolled up yet are read one by one.
        // A lease that moves on (closes, or is rolled up) during the read
        // would be counted twice or not at all: read again if either set
        // lost a member meanwhile.
        let ids = |tree: &sled::Tree| -> HashSet<LeaseId> {
            tree.iter()
                .keys()
                .filter_map(|k| k.ok().and_then(|k| LeaseId::from_slice(&k)))
                .collect()
        };
        for _ in 0..8 {
            let open = self.open_leases()?;
            let unrolled = self.unrolled_leases()?;
            let rows = self.usage_once(q, now, &open, &unrolled)?;
            let (open_now, unrolled_now) = (ids(&self.leases_open), ids(&self.unrolled));
            if open.iter().all(|l| open_now.contains(&l.id))
                && unrolled.iter().all(|l| unrolled_now.contains(&l.id))
            {
                return Ok(rows);
            }
        }
        Err(LedgerError::Busy)
    }

    fn usage_once(
        &self,
        q: &UsageQuery,
        now: UnixMillis,
        open: &[Lease],
        unrolled: &[Lease],
    ) -> Result<Vec<UsageRow>> {
        let mut rows = Rows::new(q);
        for lease in open.iter().chain(unrolled) {
            rows.add_lease(lease, now);
        }
        let pending: HashSet<LeaseId> = unrolled.iter().map(|l| l.id).collect();
        if q.to <= q.from {
            return Ok(rows.finish());
        }
        let first_hour = UnixMillis(q.from.0 - q.from.0 % HOUR_MS);
        let last_hour = UnixMillis((q.to.0 - 1) - (q.to.0 - 1) % HOUR_MS);
        let Some(rollup) = Rollup::for_grouping(&q.group_by, q.tenant.is_some()) else {
            for lease in self.closed_leases_in_hours(first_hour, last_hour)? {
                if !pending.contains(&lease.id) {
                    rows.add_lease(&lease, now);
                }
            }
            return Ok(rows.finish());
        };
        // Whole hours inside the window come from the roll-up (whole days
        // from its day cells, unless the report is by hour); the partial
        // hours at its ends from their leases.
        let whole_from = UnixMillis(q.from.0.div_ceil(HOUR_MS) * HOUR_MS);
        let whole_to = UnixMillis(q.to.0 - q.to.0 % HOUR_MS);
        let mut edges = Vec::new();
        if whole_from >= whole_to {
            edges.push((first_hour, last_hour));
        } else {
            if first_hour < whole_from {
                edges.push((first_hour, first_hour));
            }
            if whole_to <= last_hour {
                edges.push((whole_to, last_hour));
            }
            let days = if q.group_by.contains(&Dimension::Hour) {
                None
            } else {
                let from = UnixMillis(whole_from.0.div_ceil(DAY_MS) * DAY_MS);
                let to = Span::Day.start(whole_to);
                (from < to).then_some((from, to))
            };
            let stretches = match days {
                None => vec![(Span::Hour, whole_from, whole_to)],
                Some((from, to)) => vec![
                    (Span::Hour, whole_from, from),
                    (Span::Day, from, to),
                    (Span::Hour, to, whole_to),
                ],
            };
            for (span, from, to) in stretches {
                self.read_rollup(rollup, span, from, to, q.tenant.as_ref(), &mut rows)?;
            }
        }
        for (a, b) in edges {
            for lease in self.closed_leases_in_hours(a, b)? {
                if !pending.contains(&lease.id) {
                    rows.add_lease_within(&lease, now, a, UnixMillis(b.0 + HOUR_MS));
                }
            }
        }
        Ok(rows.finish())
    }

    /// Adds the cells of `rollup` of each `span` in `[from, to)` (span
    /// aligned) to `rows`: one tenant's prefix per span, or one range.
    fn read_rollup(
        &self,
        rollup: Rollup,
        span: Span,
        from: UnixMillis,
        to: UnixMillis,
        tenant: Option<&TenantName>,
        rows: &mut Rows,
    ) -> Result<()> {
        let mut add = |kv: sled::Result<(sled::IVec, sled::IVec)>| -> Result<()> {
            let (k, v) = kv?;
            let (Some((at, cell)), Some(t)) = (decode_key(&k), decode_tally(&v)) else {
                return Err(LedgerError::CorruptKey { tree: "rollups" });
            };
            rows.add(at, &cell, &t);
            Ok(())
        };
        match tenant {
            // One tenant's cells of each span are under `tag, start, tenant`:
            // seek from populated span to populated span (never step through
            // empty ones), so the cost follows the data, not the window.
            Some(tenant) => {
                let end = rollup.prefix(span, to);
                let mut at = from;
                while at < to {
                    let want = rollup.tenant_prefix(span, at, tenant.as_str());
                    let Some(kv) = self.rollups.range(want.as_slice()..end.as_slice()).next() else {
                        break;
                    };
                    let (k, _) = kv?;
                    #[cfg(test)]
                    self.seeks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let cell_at = decode_span_start(&k).ok_or(LedgerError::CorruptKey { tree: "rollups" })?;
                    if cell_at > at {
                        // Nothing of this tenant's in the spans before.
                        at = cell_at;
                        continue;
                    }
                    if k.starts_with(&want) {
                        for kv in self.rollups.scan_prefix(&want) {
                            add(kv)?;
                        }
                    }
                    at = UnixMillis(at.0 + span.ms());
                }
            }
            None => {
                for kv in self
                    .rollups
                    .range(rollup.prefix(span, from)..rollup.prefix(span, to))
                {
                    add(kv)?;
                }
            }
        }
        Ok(())
    }

    /// The first UTC hour in `[from_hour, to_hour)` with a closed lease in
    /// it, if any: exports step from hour to hour with data, not through
    /// every hour of their window.
    pub fn next_hour_with_leases(
        &self,
        from_hour: UnixMillis,
        to_hour: UnixMillis,
    ) -> Result<Option<UnixMillis>> {
        if from_hour >= to_hour {
            return Ok(None);
        }
        let start = from_hour.0.to_be_bytes();
        let end = to_hour.0.to_be_bytes();
        match self.lease_hours.range(start..end).keys().next() {
            None => Ok(None),
            Some(k) => {
                let k = k?;
                let hour = k
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or(LedgerError::CorruptKey { tree: "lease_hours" })?;
                Ok(Some(UnixMillis(hour)))
            }
        }
    }

    /// `allot ledger check`: every invariant, over every job and lease, and
    /// the roll-ups and indexes against the leases.
    pub fn check(&self, now: UnixMillis) -> Result<CheckReport> {
        let jobs = self.all_jobs()?;
        let leases = self.all_leases()?;
        let mut report = check(&jobs, &leases, now);
        let mut derived = Derived {
            rollups: HashMap::new(),
            open: HashSet::new(),
            hours: HashSet::new(),
            unrolled: HashSet::new(),
        };
        for k in self.unrolled.iter().keys() {
            let id = LeaseId::from_slice(&k?).ok_or(LedgerError::CorruptKey { tree: "unrolled" })?;
            derived.unrolled.insert(id);
        }
        for kv in self.rollups.iter() {
            let (k, v) = kv?;
            let t = decode_tally(&v).ok_or(LedgerError::CorruptKey { tree: "rollups" })?;
            derived.rollups.insert(k.to_vec(), t);
        }
        for k in self.leases_open.iter().keys() {
            derived
                .open
                .insert(LeaseId::from_slice(&k?).ok_or(LedgerError::CorruptKey { tree: "leases_open" })?);
        }
        for k in self.lease_hours.iter().keys() {
            let k = k?;
            let hour = u64::from_be_bytes(
                k[..8]
                    .try_into()
                    .map_err(|_| LedgerError::CorruptKey { tree: "lease_hours" })?,
            );
            let id = LeaseId::from_slice(&k[8..]).ok_or(LedgerError::CorruptKey { tree: "lease_hours" })?;
            derived.hours.insert((UnixMillis(hour), id));
        }
        report.problems.extend(check_derived(&leases, &derived));
        Ok(report)
    }
}
