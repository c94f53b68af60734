//! The Lua scripts that own the shared state, and their replies. The scripts transcribe
//! [`crate::state::breaker`] and [`crate::state::ratelimit`] and read Redis's clock (`TIME`), so
//! hub instances with skewed clocks still agree.
//!
//! Keys per provider, all with the hash tag `{<id>}` so one provider lives in one cluster slot:
//! `{prefix}{<id>}:br` (breaker hash: `st` c|o|h, `f` failures, `first` streak start ms, `ep`
//! epoch, `until` ms, `at` opened ms, `probe` token), `{prefix}{<id>}:rl` (bucket hash: `tat` µs)
//! and `{prefix}{<id>}:q` (daily hash: `day`, `used`).

use std::time::Duration;

use redis::Script;

use crate::state::{CircuitState, StateError};

/// `ADMIT(br, rl, q; rate, burst, quota|0, open_ms, want, refund, probe_token, debt)` →
/// `{code, granted, wait_ms, state, failures, epoch, remaining_ms, probe}`; code 0 admitted,
/// 1 rate limited, 2 quota exhausted, 3 circuit open. Returns `refund` leased tokens first,
/// charges `debt` admissions made by the instance's local fallback (the bucket may go that far
/// below empty; the caller caps it), then grants up to `want` tokens (one, as the probe, when
/// the open time is over).
const ADMIT: &str = r"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local rate, burst, quota = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local open_ms, want, refund = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local interval = 1000000 / rate
local tau = (burst - 1) * interval
local day = math.floor(now_ms / 86400000)
local b = redis.call('HMGET', KEYS[1], 'st', 'f', 'ep', 'until')
local st, f, ep, till = b[1] or 'c', tonumber(b[2] or '0'), tonumber(b[3] or '0'), tonumber(b[4] or '0')
local tat = tonumber(redis.call('HGET', KEYS[2], 'tat') or '0')
local q = redis.call('HMGET', KEYS[3], 'day', 'used')
local used = 0
if tonumber(q[1] or '-1') == day then used = tonumber(q[2] or '0') end
if refund > 0 then
  tat = tat - refund * interval
  used = math.max(0, used - refund)
end
local debt = tonumber(ARGV[8] or '0')
if debt > 0 then
  tat = math.max(tat, now_us) + debt * interval
  used = used + debt
end
local code, n, wait, probe = 0, 0, 0, 0
if st ~= 'c' and now_ms < till then
  code = 3
  wait = till - now_ms
else
  if st ~= 'c' then want = 1; probe = 1 end
  if quota > 0 and used >= quota then
    code = 2
    wait = (day + 1) * 86400000 - now_ms
  else
    if quota > 0 and want > quota - used then want = quota - used end
    local base = math.max(tat, now_us)
    local avail = math.floor((tau + interval - (base - now_us)) / interval)
    if avail < 1 then
      code = 1
      wait = math.ceil((base - tau - now_us) / 1000)
    else
      n = math.min(want, avail)
      tat = base + n * interval
      used = used + n
      if probe == 1 then
        st = 'h'
        till = now_ms + open_ms
        redis.call('HSET', KEYS[1], 'st', 'h', 'until', till, 'probe', ARGV[7])
        redis.call('PEXPIRE', KEYS[1], 3600000 + 2 * open_ms)
      end
    end
  end
end
if n > 0 or refund > 0 or debt > 0 then
  redis.call('HSET', KEYS[2], 'tat', tat)
  redis.call('PEXPIRE', KEYS[2], math.ceil(math.max(0, tat - now_us) / 1000) + 1000)
  redis.call('HSET', KEYS[3], 'day', day, 'used', used)
  redis.call('PEXPIRE', KEYS[3], 172800000)
end
local sc = 0
if st == 'o' then sc = 1 elseif st == 'h' then sc = 2 end
local rem = 0
if sc ~= 0 then rem = math.max(0, till - now_ms) end
return {code, n, wait, sc, f, ep, rem, probe}
";

/// `OUTCOME(br; kind, epoch, probe_token, threshold, window_ms, open_ms)` →
/// `{state, failures, epoch, remaining_ms}`; kind is one of `fail`, `reset`, `probe_ok`,
/// `probe_fail`, `release`.
const OUTCOME: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = ARGV[1]
local threshold, window, open_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local b = redis.call('HMGET', KEYS[1], 'st', 'f', 'ep', 'until', 'first', 'probe')
local st, f, ep = b[1] or 'c', tonumber(b[2] or '0'), tonumber(b[3] or '0')
local till, first, probe = tonumber(b[4] or '0'), tonumber(b[5] or '0'), b[6] or ''
local changed = false
if kind == 'fail' then
  if st == 'c' and ep == tonumber(ARGV[2]) then
    if f == 0 or now_ms - first >= window then f = 1; first = now_ms else f = f + 1 end
    if f >= threshold then
      st = 'o'; till = now_ms + open_ms; ep = ep + 1
      redis.call('HSET', KEYS[1], 'st', st, 'until', till, 'at', now_ms, 'ep', ep)
    end
    redis.call('HSET', KEYS[1], 'f', f, 'first', first)
    changed = true
  end
elseif kind == 'reset' then
  if st == 'c' and ep == tonumber(ARGV[2]) and f > 0 then
    f = 0
    redis.call('HSET', KEYS[1], 'f', 0, 'first', 0)
    changed = true
  end
elseif st == 'h' and probe == ARGV[3] then
  if kind == 'probe_ok' then
    st = 'c'; f = 0
    redis.call('HSET', KEYS[1], 'st', 'c', 'f', 0, 'first', 0, 'probe', '')
  elseif kind == 'probe_fail' then
    st = 'o'; till = now_ms + open_ms; f = f + 1
    redis.call('HSET', KEYS[1], 'st', 'o', 'until', till, 'at', now_ms, 'f', f, 'probe', '')
  else
    st = 'o'; till = now_ms
    redis.call('HSET', KEYS[1], 'st', 'o', 'until', till, 'probe', '')
  end
  changed = true
end
if changed then redis.call('PEXPIRE', KEYS[1], 3600000 + 2 * open_ms) end
local sc = 0
if st == 'o' then sc = 1 elseif st == 'h' then sc = 2 end
local rem = 0
if sc ~= 0 then rem = math.max(0, till - now_ms) end
return {sc, f, ep, rem}
";

/// `SNAPSHOT(br, rl, q; rate, burst)` →
/// `{state, failures, opened_at_ms, until_ms, available, used_today}`.
const SNAPSHOT: &str = r"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval = 1000000 / rate
local tau = (burst - 1) * interval
local b = redis.call('HMGET', KEYS[1], 'st', 'f', 'at', 'until')
local st = b[1] or 'c'
local sc = 0
if st == 'o' then sc = 1 elseif st == 'h' then sc = 2 end
local tat = tonumber(redis.call('HGET', KEYS[2], 'tat') or '0')
local avail = math.floor((tau + interval - math.max(0, tat - now_us)) / interval)
avail = math.max(0, math.min(burst, avail))
local q = redis.call('HMGET', KEYS[3], 'day', 'used')
local used = 0
if tonumber(q[1] or '-1') == math.floor(now_ms / 86400000) then used = tonumber(q[2] or '0') end
local at, till = 0, 0
if sc ~= 0 then at = tonumber(b[3] or '0'); till = tonumber(b[4] or '0') end
return {sc, tonumber(b[2] or '0'), at, till, avail, used}
";

/// The three scripts, hashed once.
pub(super) struct Scripts {
    pub admit: Script,
    pub outcome: Script,
    pub snapshot: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            admit: Script::new(ADMIT),
            outcome: Script::new(OUTCOME),
            snapshot: Script::new(SNAPSHOT),
        }
    }

    pub fn all(&self) -> [&Script; 3] {
        [&self.admit, &self.outcome, &self.snapshot]
    }
}

/// The breaker as a script reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BreakerView {
    pub state: CircuitState,
    pub failures: u32,
    pub epoch: u64,
    /// Open: until the probe may go; half-open: until the probe's lease ends.
    pub remaining: Duration,
}

/// What `ADMIT` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AdmitReply {
    /// `granted` tokens leased (exactly one when `probe`).
    Granted {
        granted: u32,
        probe: bool,
    },
    RateLimited(Duration),
    QuotaExhausted(Duration),
    CircuitOpen(Duration),
}

pub(super) fn parse_admit(v: &[i64]) -> Result<(AdmitReply, BreakerView), StateError> {
    let [code, granted, wait, sc, f, ep, rem, probe] = v else {
        return Err(StateError::Reply("ADMIT arity"));
    };
    let wait = millis(*wait);
    let reply = match code {
        0 => AdmitReply::Granted {
            granted: u32::try_from(*granted).map_err(|_| StateError::Reply("ADMIT granted"))?,
            probe: *probe == 1,
        },
        1 => AdmitReply::RateLimited(wait),
        2 => AdmitReply::QuotaExhausted(wait),
        3 => AdmitReply::CircuitOpen(wait),
        _ => return Err(StateError::Reply("ADMIT code")),
    };
    Ok((reply, view(*sc, *f, *ep, *rem)?))
}

pub(super) fn parse_outcome(v: &[i64]) -> Result<BreakerView, StateError> {
    let [sc, f, ep, rem] = v else {
        return Err(StateError::Reply("OUTCOME arity"));
    };
    view(*sc, *f, *ep, *rem)
}

fn view(sc: i64, f: i64, ep: i64, rem: i64) -> Result<BreakerView, StateError> {
    Ok(BreakerView {
        state: circuit(sc)?,
        failures: u32::try_from(f).unwrap_or(u32::MAX),
        epoch: u64::try_from(ep).map_err(|_| StateError::Reply("epoch"))?,
        remaining: millis(rem),
    })
}

pub(super) fn circuit(sc: i64) -> Result<CircuitState, StateError> {
    match sc {
        0 => Ok(CircuitState::Closed),
        1 => Ok(CircuitState::Open),
        2 => Ok(CircuitState::HalfOpen),
        _ => Err(StateError::Reply("circuit state")),
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
