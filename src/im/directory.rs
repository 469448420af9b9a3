//! Users and groups as operators change them: each change is checked here and becomes the
//! storage [`Op`]s that record it.
//!
//! The same functions serve a running broker (the router applies group changes to its
//! in-memory [`Groups`] and writes the op; user changes go straight to storage, since
//! connections read users from the store) and a stopped one (the CLI applies them to the
//! database directly), so both paths accept and refuse exactly the same things.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tern_storage::{Op, Store, StoredGroup, StoredUser};

use super::auth::hash_password;
use super::topics::valid_id;

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(String),
}

/// A change to the registered users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    Add {
        user: String,
        password: String,
        operator: bool,
    },
    Delete {
        user: String,
    },
    Passwd {
        user: String,
        password: String,
    },
}

/// A change to the groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    Create { gid: String, members: Vec<String> },
    Delete { gid: String },
    Add { gid: String, user: String },
    Remove { gid: String, user: String },
}

fn check_id(kind: &str, id: &str) -> Result<(), ChangeError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(ChangeError::Invalid(format!(
            "{kind} id {id:?} is not usable: 1 to 256 bytes, no '/', '+', '#' or NUL, not starting with '$'"
        )))
    }
}

/// Checks a user change against the store and returns its ops. Blocks: reads the store and
/// hashes passwords (argon2).
pub fn user_ops(
    store: &dyn Store,
    change: &UserChange,
    now_ms: u64,
) -> Result<Vec<Op>, ChangeError> {
    let name = match change {
        UserChange::Add { user, .. }
        | UserChange::Delete { user }
        | UserChange::Passwd { user, .. } => user,
    };
    let existing = store
        .user(name)
        .map_err(|e| ChangeError::Storage(e.to_string()))?;
    Ok(vec![match user_change(existing, change, now_ms)? {
        Some(user) => Op::PutUser(user),
        None => Op::DeleteUser { user: name.clone() },
    }])
}

/// Checks a user change against the user as it is (`existing`) and returns the user as it
/// will be (`None`: deleted). Blocks: hashes passwords (argon2).
pub fn user_change(
    existing: Option<StoredUser>,
    change: &UserChange,
    now_ms: u64,
) -> Result<Option<StoredUser>, ChangeError> {
    let check_password = |password: &str| {
        if password.is_empty() {
            Err(ChangeError::Invalid("the password is empty".into()))
        } else {
            Ok(())
        }
    };
    match change {
        UserChange::Add {
            user,
            password,
            operator,
        } => {
            check_id("user", user)?;
            check_password(password)?;
            if existing.is_some() {
                return Err(ChangeError::Exists(format!("user {user} already exists")));
            }
            let password_hash = hash_password(password).map_err(ChangeError::Storage)?;
            Ok(Some(StoredUser {
                user: user.clone(),
                password_hash,
                operator: *operator,
                created_at_ms: now_ms,
            }))
        }
        UserChange::Delete { user } => {
            if existing.is_none() {
                return Err(ChangeError::NotFound(format!("no user {user}")));
            }
            Ok(None)
        }
        UserChange::Passwd { user, password } => {
            check_password(password)?;
            let Some(mut stored) = existing else {
                return Err(ChangeError::NotFound(format!("no user {user}")));
            };
            stored.password_hash = hash_password(password).map_err(ChangeError::Storage)?;
            Ok(Some(stored))
        }
    }
}

/// Every group with its members, in memory (owned by the router in a running broker),
/// and each member's groups (to tell whether two users share one without a walk over
/// every group).
#[derive(Debug, Default, Clone)]
pub struct Groups {
    groups: HashMap<String, (BTreeSet<String>, u64)>,
    /// User -> the groups it is a member of (the group ids shared, not copied).
    by_member: HashMap<String, HashSet<Arc<str>>>,
    max_members: usize,
}

impl Groups {
    pub fn new(stored: Vec<StoredGroup>, max_members: usize) -> Groups {
        let mut groups = Groups {
            max_members,
            ..Groups::default()
        };
        for group in stored {
            groups.put(group);
        }
        groups
    }

    /// Sets a group as another node of the cluster changed it (already checked there).
    pub fn put(&mut self, group: StoredGroup) {
        self.remove(&group.gid);
        let members: BTreeSet<String> = group.members.into_iter().collect();
        self.index(&group.gid, members.iter());
        self.groups
            .insert(group.gid, (members, group.created_at_ms));
    }

    /// Removes a group another node of the cluster deleted.
    pub fn remove(&mut self, gid: &str) {
        if let Some((members, _)) = self.groups.remove(gid) {
            for member in &members {
                self.unindex(gid, member);
            }
        }
    }

    fn index<'m>(&mut self, gid: &str, members: impl Iterator<Item = &'m String>) {
        let gid: Arc<str> = Arc::from(gid);
        for member in members {
            self.by_member
                .entry(member.clone())
                .or_default()
                .insert(gid.clone());
        }
    }

    fn unindex(&mut self, gid: &str, member: &str) {
        if let Some(gids) = self.by_member.get_mut(member) {
            gids.remove(gid);
            if gids.is_empty() {
                self.by_member.remove(member);
            }
        }
    }

    pub fn members(&self, gid: &str) -> Option<&BTreeSet<String>> {
        self.groups.get(gid).map(|(members, _)| members)
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether `a` and `b` are members of one group (a walk over the groups of the one in
    /// fewer).
    pub fn shared(&self, a: &str, b: &str) -> bool {
        let (Some(of_a), Some(of_b)) = (self.by_member.get(a), self.by_member.get(b)) else {
            return false;
        };
        let (fewer, more) = if of_a.len() <= of_b.len() {
            (of_a, of_b)
        } else {
            (of_b, of_a)
        };
        fewer.iter().any(|gid| more.contains(gid))
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn stored(&self, gid: &str) -> Option<StoredGroup> {
        self.groups.get(gid).map(|(members, created)| StoredGroup {
            gid: gid.to_string(),
            members: members.iter().cloned().collect(),
            created_at_ms: *created,
        })
    }

    /// Applies a change in memory and returns the op that records it.
    pub fn apply(&mut self, change: &GroupChange, now_ms: u64) -> Result<Op, ChangeError> {
        let missing = |gid: &str| ChangeError::NotFound(format!("no group {gid}"));
        match change {
            GroupChange::Create { gid, members } => {
                check_id("group", gid)?;
                if self.groups.contains_key(gid) {
                    return Err(ChangeError::Exists(format!("group {gid} already exists")));
                }
                let members: BTreeSet<String> = members.iter().cloned().collect();
                for member in &members {
                    check_id("user", member)?;
                }
                if members.len() > self.max_members {
                    return Err(ChangeError::Invalid(format!(
                        "{} members, more than im.max_group_members ({})",
                        members.len(),
                        self.max_members
                    )));
                }
                self.index(gid, members.iter());
                self.groups.insert(gid.clone(), (members, now_ms));
            }
            GroupChange::Delete { gid } => {
                if !self.groups.contains_key(gid) {
                    return Err(missing(gid));
                }
                self.remove(gid);
                return Ok(Op::DeleteGroup { gid: gid.clone() });
            }
            GroupChange::Add { gid, user } => {
                check_id("user", user)?;
                let max = self.max_members;
                let (members, _) = self.groups.get_mut(gid).ok_or_else(|| missing(gid))?;
                if members.contains(user) {
                    return Err(ChangeError::Exists(format!("{user} is already in {gid}")));
                }
                if members.len() >= max {
                    return Err(ChangeError::Invalid(format!(
                        "group {gid} is full (im.max_group_members = {max})"
                    )));
                }
                members.insert(user.clone());
                self.index(gid, std::iter::once(user));
            }
            GroupChange::Remove { gid, user } => {
                let (members, _) = self.groups.get_mut(gid).ok_or_else(|| missing(gid))?;
                if !members.remove(user) {
                    return Err(ChangeError::NotFound(format!("{user} is not in {gid}")));
                }
                self.unindex(gid, user);
            }
        }
        let gid = match change {
            GroupChange::Create { gid, .. }
            | GroupChange::Add { gid, .. }
            | GroupChange::Remove { gid, .. }
            | GroupChange::Delete { gid } => gid,
        };
        self.stored(gid)
            .map(Op::PutGroup)
            .ok_or_else(|| missing(gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_storage::MemoryStore;

    #[test]
    fn group_changes_are_checked_and_recorded() {
        let mut groups = Groups::new(Vec::new(), 3);
        let create = GroupChange::Create {
            gid: "g1".into(),
            members: vec!["bob".into(), "alice".into(), "bob".into()],
        };
        let Op::PutGroup(stored) = groups.apply(&create, 7).expect("create") else {
            panic!("not a PutGroup");
        };
        assert_eq!(stored.members, vec!["alice", "bob"]);
        assert!(matches!(
            groups.apply(&create, 8),
            Err(ChangeError::Exists(_))
        ));
        let add = |user: &str| GroupChange::Add {
            gid: "g1".into(),
            user: user.into(),
        };
        groups.apply(&add("carol"), 9).expect("add");
        assert!(matches!(
            groups.apply(&add("dave"), 9),
            Err(ChangeError::Invalid(_))
        ));
        assert!(matches!(
            groups.apply(&add("a/b"), 9),
            Err(ChangeError::Invalid(_))
        ));
        let remove = GroupChange::Remove {
            gid: "g1".into(),
            user: "zed".into(),
        };
        assert!(matches!(
            groups.apply(&remove, 9),
            Err(ChangeError::NotFound(_))
        ));
        let delete = GroupChange::Delete { gid: "g1".into() };
        assert_eq!(
            groups.apply(&delete, 9),
            Ok(Op::DeleteGroup { gid: "g1".into() })
        );
        assert!(groups.members("g1").is_none());
    }

    #[test]
    fn shared_groups_follow_every_change() {
        let group = |gid: &str, members: &[&str]| StoredGroup {
            gid: gid.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            created_at_ms: 0,
        };
        let mut g = Groups::new(vec![group("g1", &["a", "b"])], 10);
        assert!(g.shared("a", "b") && g.shared("b", "a"));
        assert!(!g.shared("a", "c") && !g.shared("a", "nobody"));
        let change = |gid: &str, user: &str| (gid.to_string(), user.to_string());
        let (gid, user) = change("g1", "c");
        g.apply(&GroupChange::Add { gid, user }, 1).expect("add");
        assert!(g.shared("a", "c"));
        let (gid, user) = change("g1", "a");
        g.apply(&GroupChange::Remove { gid, user }, 1)
            .expect("remove");
        assert!(!g.shared("a", "c") && g.shared("b", "c"));
        g.apply(
            &GroupChange::Create {
                gid: "g2".into(),
                members: vec!["a".into(), "c".into()],
            },
            1,
        )
        .expect("create");
        assert!(g.shared("a", "c"));
        // Another node's version of g2 replaces it, members and all.
        g.put(group("g2", &["a", "d"]));
        assert!(!g.shared("a", "c") && g.shared("a", "d"));
        g.apply(&GroupChange::Delete { gid: "g2".into() }, 1)
            .expect("delete");
        assert!(!g.shared("a", "d"));
        g.remove("g1");
        assert!(!g.shared("b", "c"));
        assert!(g.by_member.is_empty(), "{:?}", g.by_member);
    }

    #[test]
    fn user_changes_are_checked_against_the_store() {
        let store = MemoryStore::new();
        let add = UserChange::Add {
            user: "alice".into(),
            password: "pw".into(),
            operator: false,
        };
        let ops = user_ops(&store, &add, 1).expect("add");
        store.write(&ops, false).expect("write");
        assert!(matches!(
            user_ops(&store, &add, 1),
            Err(ChangeError::Exists(_))
        ));
        let gone = UserChange::Delete { user: "bob".into() };
        assert!(matches!(
            user_ops(&store, &gone, 1),
            Err(ChangeError::NotFound(_))
        ));
        let empty = UserChange::Passwd {
            user: "alice".into(),
            password: String::new(),
        };
        assert!(matches!(
            user_ops(&store, &empty, 1),
            Err(ChangeError::Invalid(_))
        ));
    }
}
