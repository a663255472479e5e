//! The `policy` scenario's oracle: concurrent logins of the same users on
//! every node, judged against the router's login policy.
//!
//! Every node opens one session of every *contested* user at the same
//! moment, with a device and platform that follow from (user, node), so
//! every party knows all the opens. The router applies them in some order
//! it alone knows; whatever the order, each open must end either in the
//! final table (read with Locate) or kicked (a Kick on its node), never
//! both, and the final table must satisfy the policy.

use std::collections::HashMap;

use imrouter::table::LoginPolicy;

/// Devices and platforms the contested opens pick from.
const DEVICES: u64 = 3;
const PLATFORMS: [u8; 3] = [1, 2, 3]; // Mobile, Desktop, Web

/// Contested users are `c` + 15 digits.
pub fn contested_id(user: u32) -> [u8; 16] {
    let mut id = crate::workload::user_id(user);
    id[0] = b'c';
    id
}

/// Reads a contested user id back.
pub fn parse_contested_id(id: &[u8]) -> Option<u32> {
    let mut as_user = id.to_vec();
    if as_user.first() != Some(&b'c') {
        return None;
    }
    as_user[0] = b'u';
    crate::workload::parse_user_id(&as_user)
}

/// The (device, platform) node `node` opens for contested user `user`.
pub fn open_of(user: u32, node: u32) -> (u8, u8) {
    let mut h = (u64::from(user) << 32 | u64::from(node)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    let device = (h % DEVICES) as u8;
    let platform = PLATFORMS[((h >> 8) % PLATFORMS.len() as u64) as usize];
    (device, platform)
}

/// How many contested users a run has.
pub fn contested_count(users: u32) -> u32 {
    (users / 10).clamp(10, 10_000)
}

/// What the judge found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub users: u64,
    pub kicks: u64,
    /// Users whose final sessions or kicks contradict the opens or the
    /// policy.
    pub violations: u64,
    /// The first violation, explained.
    pub first: Option<String>,
}

/// Judges every contested user. `kicks` are (node, user, device) as
/// received; `located` maps a user to its final sessions (node, device,
/// platform).
pub fn judge(
    policy: LoginPolicy,
    contested: u32,
    nodes: u32,
    kicks: &[(u32, u32, u8)],
    located: &HashMap<u32, Vec<(u32, u8, u8)>>,
) -> Verdict {
    let mut kicks_by_user: HashMap<u32, Vec<(u32, u8)>> = HashMap::new();
    for &(node, user, device) in kicks {
        kicks_by_user.entry(user).or_default().push((node, device));
    }
    let mut verdict = Verdict {
        users: u64::from(contested),
        kicks: kicks.len() as u64,
        ..Verdict::default()
    };
    for user in 0..contested {
        let opens: Vec<(u32, u8, u8)> = (0..nodes)
            .map(|node| {
                let (device, platform) = open_of(user, node);
                (node, device, platform)
            })
            .collect();
        let finals = located.get(&user).map_or(&[][..], Vec::as_slice);
        let kicked = kicks_by_user.get(&user).map_or(&[][..], Vec::as_slice);
        if let Err(why) = judge_user(policy, &opens, finals, kicked) {
            verdict.violations += 1;
            if verdict.first.is_none() {
                verdict.first = Some(format!(
                    "contested user {user}: {why} (opens {opens:?}, final {finals:?}, kicked {kicked:?})"
                ));
            }
        }
    }
    verdict
}

fn judge_user(
    policy: LoginPolicy,
    opens: &[(u32, u8, u8)],
    finals: &[(u32, u8, u8)],
    kicked: &[(u32, u8)],
) -> Result<(), String> {
    if finals.is_empty() {
        return Err("no session left".into());
    }
    for session in finals {
        if !opens.contains(session) {
            return Err(format!("final session {session:?} was never opened"));
        }
        if kicked.contains(&(session.0, session.1)) {
            return Err(format!("final session {session:?} was also kicked"));
        }
    }
    for kick in kicked {
        if !opens.iter().any(|o| (o.0, o.1) == *kick) {
            return Err(format!("kick {kick:?} of a session never opened"));
        }
    }
    if finals.len() + kicked.len() != opens.len() {
        return Err(format!(
            "{} opens but {} final sessions and {} kicks",
            opens.len(),
            finals.len(),
            kicked.len()
        ));
    }
    let distinct = |key: &dyn Fn(&(u32, u8, u8)) -> u8| {
        let mut seen: Vec<u8> = finals.iter().map(key).collect();
        seen.sort_unstable();
        seen.windows(2).all(|w| w[0] != w[1])
    };
    let allowed = match policy {
        LoginPolicy::AllowAll => kicked.is_empty(),
        LoginPolicy::SameDeviceKick => distinct(&|s| s.1),
        LoginPolicy::SamePlatformKick => distinct(&|s| s.1) && distinct(&|s| s.2),
        LoginPolicy::SingleSession => finals.len() == 1,
    };
    if !allowed {
        return Err(format!("the final sessions break {policy:?}"));
    }
    // Under same-device-kick a session is only ever replaced by the same
    // device opened elsewhere, which (or whose own replacement) is final.
    if policy == LoginPolicy::SameDeviceKick {
        if let Some(kick) = kicked.iter().find(|k| !finals.iter().any(|f| f.1 == k.1)) {
            return Err(format!("kick {kick:?} has no final session of its device"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(user: u32, sessions: Vec<(u32, u8, u8)>) -> HashMap<u32, Vec<(u32, u8, u8)>> {
        HashMap::from([(user, sessions)])
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(parse_contested_id(&contested_id(42)), Some(42));
        assert_eq!(parse_contested_id(&crate::workload::user_id(42)), None);
    }

    #[test]
    fn single_session_keeps_one_and_kicks_the_rest() {
        let nodes = 3;
        let opens: Vec<(u32, u8, u8)> = (0..nodes)
            .map(|n| {
                let (d, p) = open_of(0, n);
                (n, d, p)
            })
            .collect();
        let kicks: Vec<(u32, u32, u8)> = opens[1..].iter().map(|o| (o.0, 0, o.1)).collect();
        let good = judge(
            LoginPolicy::SingleSession,
            1,
            nodes,
            &kicks,
            &located(0, vec![opens[0]]),
        );
        assert_eq!(good.violations, 0, "{good:?}");
        // A kick missing: the counts do not add up.
        let bad = judge(
            LoginPolicy::SingleSession,
            1,
            nodes,
            &kicks[1..],
            &located(0, vec![opens[0]]),
        );
        assert_eq!(bad.violations, 1);
        // Two sessions left under single-session.
        let bad = judge(
            LoginPolicy::SingleSession,
            1,
            nodes,
            &kicks[1..],
            &located(0, vec![opens[0], opens[1]]),
        );
        assert_eq!(bad.violations, 1);
    }

    #[test]
    fn allow_all_keeps_everything() {
        let opens: Vec<(u32, u8, u8)> = (0..4)
            .map(|n| {
                let (d, p) = open_of(7, n);
                (n, d, p)
            })
            .collect();
        let v = judge(LoginPolicy::AllowAll, 8, 4, &[], &located(7, opens));
        // Users 0..7 have no Located answer here: 7 violations, not user 7.
        assert_eq!(v.violations, 7);
    }
}
