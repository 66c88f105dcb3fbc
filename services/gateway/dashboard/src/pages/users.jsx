// Users (administrators): the accounts and pending invitations; invite, add, edit, disable,
// reset a password, delete.
import { useState } from "preact/hooks";
import { api, del, get } from "../api.js";
import { useSession } from "../session.js";
import { Badge, Dialog, Loaded, PageHead, formatTime, relativeTime, useAsync, ListTable } from "../ui/common.jsx";
import { ConfirmForm, byName, nameOf, useStatus } from "./users_common.jsx";
import { AddUserForm, EditUserForm, InviteForm, ResetPasswordForm } from "./users_forms.jsx";

async function load() {
  const [users, groups, invitations] = await Promise.all([get("/users"), get("/groups"), get("/invitations")]);
  return {
    users: users.items.sort(byName("username")),
    groups: groups.items.sort(byName("name")),
    invitations: invitations.items.sort(byName("email")),
  };
}

const groupNames = (ids, groups) =>
  groups
    .filter((g) => ids.includes(g.group_id))
    .map((g) => g.name)
    .join(", ");

function UserRow({ user, groups, self, busy, onDialog, onEnable }) {
  const memberOf = groups.filter((g) => g.members.includes(user.user_id)).map((g) => g.name);
  const open = (kind) => () => onDialog({ kind, user });
  return (
    <tr>
      <td data-label="User">
        <span>
          <strong>{user.username}</strong>
          {user.display_name && <span class="muted cell-sub">{user.display_name}</span>}
        </span>
      </td>
      <td data-label="Email" class="cell-wrap">
        {user.email}
      </td>
      <td data-label="Role">
        <span class="badge-row">
          {user.is_admin ? <Badge kind="info">Administrator</Badge> : <span class="muted">User</span>}
          {user.disabled && <Badge kind="bad">Disabled</Badge>}
          {self && <Badge>You</Badge>}
        </span>
      </td>
      <td data-label="Groups">{memberOf.length ? memberOf.join(", ") : <span class="muted">–</span>}</td>
      <td data-label="Actions" class="actions">
        <div class="row-actions">
          <button type="button" class="btn btn-secondary" onClick={open("edit")} aria-label={`Edit ${user.username}`}>
            Edit
          </button>
          <button type="button" class="btn btn-ghost" onClick={open("reset")} aria-label={`Reset the password of ${user.username}`}>
            Reset password
          </button>
          {!self &&
            (user.disabled ? (
              <button type="button" class="btn btn-ghost" disabled={busy} onClick={() => onEnable(user)} aria-label={`Enable ${user.username}`}>
                Enable
              </button>
            ) : (
              <button type="button" class="btn btn-ghost" onClick={open("disable")} aria-label={`Disable ${user.username}`}>
                Disable
              </button>
            ))}
          {!self && (
            <button type="button" class="btn btn-danger" onClick={open("delete")} aria-label={`Delete ${user.username}`}>
              Delete
            </button>
          )}
        </div>
      </td>
    </tr>
  );
}

function UserTable({ data, me, busy, onDialog, onEnable }) {
  return (
    <ListTable caption="Users" columns={["User", "Email", "Role", "Groups"]} actions>
      {data.users.map((u) => (
        <UserRow key={u.user_id} user={u} groups={data.groups} self={u.user_id === me.user_id} busy={busy} onDialog={onDialog} onEnable={onEnable} />
      ))}
    </ListTable>
  );
}

function Invitations({ data, onRevoke }) {
  if (data.invitations.length === 0) return <p class="muted">No pending invitations.</p>;
  return (
    <ListTable caption="Pending invitations" columns={["Email", "Role", "Groups", "Created", "Expires"]} actions>
      {data.invitations.map((inv) => (
        <tr key={inv.invitation_id}>
          <td data-label="Email" class="cell-wrap">
            {inv.email}
          </td>
          <td data-label="Role">{inv.is_admin ? <Badge kind="info">Administrator</Badge> : <span class="muted">User</span>}</td>
          <td data-label="Groups">{groupNames(inv.groups, data.groups) || <span class="muted">–</span>}</td>
          <td data-label="Created">{formatTime(inv.created_at)}</td>
          <td data-label="Expires">
            <time datetime={inv.expires_at} title={formatTime(inv.expires_at)}>
              {relativeTime(inv.expires_at)}
            </time>
          </td>
          <td data-label="Actions" class="actions">
            <button type="button" class="btn btn-ghost" onClick={() => onRevoke(inv)} aria-label={`Revoke the invitation of ${inv.email}`}>
              Revoke
            </button>
          </td>
        </tr>
      ))}
    </ListTable>
  );
}

export function Users() {
  const { me, refresh } = useSession();
  const state = useAsync(load, []);
  const [dialog, setDialog] = useState(null);
  const status = useStatus();
  const close = () => setDialog(null);
  const done = async (message) => {
    close();
    status.say(message);
    await state.reload();
  };
  const enable = (user) =>
    status.run(async () => {
      // api() itself: this route takes no body, and post()/put() send {}
      await api("POST", `/users/${user.user_id}/enable`);
      await state.reload();
    }, `${user.username} is enabled again: they can sign in.`);
  const groups = state.data ? state.data.groups : [];
  const user = dialog && dialog.user;

  let title = "";
  let body = null;
  if (dialog && dialog.kind === "invite") {
    title = "Invite a user";
    body = <InviteForm groups={groups} onClose={close} onInvited={(email) => state.reload().then(() => status.say(`${email} is invited.`))} />;
  } else if (dialog && dialog.kind === "add") {
    title = "Add a user";
    body = <AddUserForm onAdded={(name) => done(`${name} is added.`)} />;
  } else if (dialog && dialog.kind === "edit") {
    title = `Edit ${user.username}`;
    body = (
      <EditUserForm
        user={user}
        self={user.user_id === me.user_id}
        onCancel={close}
        onSaved={async (saved) => {
          if (saved.user_id === me.user_id) await refresh();
          await done(`Changes to ${saved.username} are saved.`);
        }}
      />
    );
  } else if (dialog && dialog.kind === "reset") {
    title = `Reset the password of ${user.username}`;
    body = <ResetPasswordForm user={user} onClose={close} />;
  } else if (dialog && dialog.kind === "disable") {
    title = `Disable ${user.username}?`;
    body = (
      <ConfirmForm
        confirmLabel="Disable"
        onCancel={close}
        onConfirm={async () => {
          await api("POST", `/users/${user.user_id}/disable`);
          await done(`${user.username} is disabled.`);
        }}
      >
        <p>
          <strong>{nameOf(user)}</strong> can no longer sign in to Homeport or its apps; their sessions and API tokens end now. You can enable
          the account again later.
        </p>
      </ConfirmForm>
    );
  } else if (dialog && dialog.kind === "delete") {
    title = `Delete ${user.username}?`;
    body = (
      <ConfirmForm
        confirmLabel={`Delete ${user.username}`}
        onCancel={close}
        onConfirm={async () => {
          await del(`/users/${user.user_id}`);
          await done(`${user.username} is deleted.`);
        }}
      >
        <p>
          This deletes the account of <strong>{nameOf(user)}</strong> ({user.email}): they can no longer sign in to Homeport or to the apps it
          opens for them; their sessions, API tokens, two-step sign-in and group memberships go, their mailbox is deleted with all its
          mail, and their name and email are erased for good.
        </p>
        <p>
          <strong>This cannot be undone.</strong> To only stop them signing in, disable the account instead.
        </p>
      </ConfirmForm>
    );
  } else if (dialog && dialog.kind === "revoke") {
    const inv = dialog.invitation;
    title = "Revoke this invitation?";
    body = (
      <ConfirmForm
        confirmLabel="Revoke"
        onCancel={close}
        onConfirm={async () => {
          await del(`/invitations/${inv.invitation_id}`);
          await done(`The invitation of ${inv.email} is revoked.`);
        }}
      >
        <p>
          The link sent to <strong>{inv.email}</strong> stops working. You can invite them again later.
        </p>
      </ConfirmForm>
    );
  }

  return (
    <>
      <PageHead title="Users">
        <button type="button" class="btn btn-primary" onClick={() => setDialog({ kind: "invite" })}>
          Invite user
        </button>
        <button type="button" class="btn btn-secondary" onClick={() => setDialog({ kind: "add" })}>
          Add user
        </button>
      </PageHead>
      {status.note}
      <Loaded state={state} what="Loading users">
        {(data) => (
          <>
            <section aria-labelledby="users-accounts">
              <h2 id="users-accounts" class="sr-only">
                Accounts
              </h2>
              <UserTable data={data} me={me} busy={status.busy} onDialog={setDialog} onEnable={enable} />
            </section>
            <section aria-labelledby="users-invitations">
              <h2 id="users-invitations">Pending invitations</h2>
              <Invitations data={data} onRevoke={(invitation) => setDialog({ kind: "revoke", invitation })} />
            </section>
          </>
        )}
      </Loaded>
      <Dialog title={title} open={!!dialog} onClose={close}>
        {body}
      </Dialog>
    </>
  );
}
