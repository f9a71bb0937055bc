//! Who may send which admin request, decided from the caller's peer credentials (`SO_PEERCRED`).
//!
//! - Operators, members of [`OPERATORS_GROUP`] (`govbox-admin`): clients, models, policies, TLS
//!   reload, update steps, retention (`audit_prune`).
//! - Auditors, members of [`AUDITORS_GROUP`] (`govbox-audit-readers`): `audit_export`,
//!   `audit_tail`, `audit_hmac`, `content_read` (`govbox audit verify` needs no daemon).
//! - Either role: `status`, the lists, `attest`.
//! - Root and the socket's owner (govboxd's own uid) may do everything.
//!
//! A caller in neither group is refused every request. One account may hold both roles.

use crate::AdminRequest;

/// The operators' group (`dist/sysusers.d/govbox.conf`).
pub const OPERATORS_GROUP: &str = crate::socket::ADMIN_GROUP;
/// The auditors' group (`dist/sysusers.d/govbox.conf`).
pub const AUDITORS_GROUP: &str = "govbox-audit-readers";

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Either role.
    Either,
    /// The operator role.
    Operator,
    /// The auditor role.
    Auditor,
}

impl Needs {
    /// The group that grants it, for refusals.
    pub fn group(self) -> &'static str {
        match self {
            Needs::Either => "govbox-admin or govbox-audit-readers",
            Needs::Operator => OPERATORS_GROUP,
            Needs::Auditor => AUDITORS_GROUP,
        }
    }
}

impl AdminRequest {
    /// The role this request needs.
    pub fn needs(&self) -> Needs {
        match self {
            AdminRequest::Status(_)
            | AdminRequest::ClientList(_)
            | AdminRequest::ModelList(_)
            | AdminRequest::PolicyList(_)
            | AdminRequest::Attest(_) => Needs::Either,
            AdminRequest::AuditExport(_)
            | AdminRequest::AuditTail(_)
            | AdminRequest::AuditHmac(_)
            | AdminRequest::ContentRead(_) => Needs::Auditor,
            _ => Needs::Operator,
        }
    }
}

/// The roles a caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    /// Member of the operators' group (or root, or the socket's owner).
    pub operator: bool,
    /// Member of the auditors' group (or root, or the socket's owner).
    pub auditor: bool,
}

/// The group ids the roles are granted by (`None` where the group does not exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoleGroups {
    /// The operators' group id.
    pub operators: Option<u32>,
    /// The auditors' group id.
    pub auditors: Option<u32>,
}

impl Access {
    /// Both roles.
    pub const FULL: Access = Access { operator: true, auditor: true };

    /// The roles of a caller with user id `uid` and groups `gids` (primary and supplementary),
    /// where the socket belongs to `owner_uid`.
    pub fn of(uid: u32, gids: &[u32], owner_uid: u32, groups: RoleGroups) -> Access {
        if uid == 0 || uid == owner_uid {
            return Access::FULL;
        }
        let member = |g: Option<u32>| g.is_some_and(|g| gids.contains(&g));
        Access { operator: member(groups.operators), auditor: member(groups.auditors) }
    }

    /// Whether these roles allow what a request needs.
    pub fn allows(self, needs: Needs) -> bool {
        match needs {
            Needs::Either => self.operator || self.auditor,
            Needs::Operator => self.operator,
            Needs::Auditor => self.auditor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AuditHmac, ClientRevoke, Status};

    #[test]
    fn roles_follow_groups_and_root_and_the_owner_hold_both() {
        let groups = RoleGroups { operators: Some(900), auditors: Some(901) };
        let hmac: AdminRequest = AuditHmac { text: "t".into(), client: None }.into();
        let revoke: AdminRequest = ClientRevoke { name: "a".into() }.into();
        let status: AdminRequest = Status {}.into();
        let op = Access::of(1000, &[1000, 900], 998, groups);
        assert!(op.allows(revoke.needs()) && op.allows(status.needs()) && !op.allows(hmac.needs()));
        let aud = Access::of(1001, &[901], 998, groups);
        assert!(aud.allows(hmac.needs()) && aud.allows(status.needs()) && !aud.allows(revoke.needs()));
        let nobody = Access::of(1002, &[1002], 998, groups);
        assert!(!nobody.allows(status.needs()));
        assert_eq!(Access::of(0, &[], 998, groups), Access::FULL);
        assert_eq!(Access::of(998, &[], 998, RoleGroups::default()), Access::FULL);
        assert!(!Access::of(1000, &[900], 998, RoleGroups::default()).allows(revoke.needs()));
    }
}
