// Groups (administrators): who is in each group and which apps the group opens.
import { useState } from "preact/hooks";
import { api, del, get, patch, post } from "../api.js";
import { Badge, Dialog, Loaded, PageHead, useAsync, ListTable } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import { ConfirmForm, byName, nameOf, useStatus } from "./users_common.jsx";

const NAME_HINT = "2 to 32 characters: a lower-case letter, then lower-case letters, digits, _ or -";

// Groups and members come from identity, apps from the apps service: when only the apps are
// unavailable, the groups can still be managed (appsError says why their apps are unknown).
async function load() {
  const [groups, users, apps] = await Promise.all([get("/groups"), get("/users"), get("/apps").catch((error) => ({ error }))]);
  return {
    groups: groups.items.sort(byName("name")),
    users: users.items.sort(byName("username")),
    apps: apps.error ? null : apps.items.sort(byName("location")),
    appsError: apps.error || null,
  };
}

/** The apps members of the group may open: those open to the group, or to every user (null
 * when the apps are unknown). */
const appsOf = (group, apps) => apps && apps.filter((a) => a.access && (a.access.all_users || (a.access.groups || []).includes(group.group_id)));

function AppsUnknown({ error }) {
  return (
    <p class="notice">
      Which apps the groups open is unknown for now: {error.message}
    </p>
  );
}

function AppLinks({ apps }) {
  if (apps === null) return <span class="muted">Unknown</span>;
  if (apps.length === 0) return <span class="muted">None</span>;
  return (
    <ul class="link-list">
      {apps.map((a) => (
        <li key={a.app_id}>
          <a href={`#/apps/${a.app_id}`}>{a.location}</a> <span class="muted">{a.manifest_id}</span>
          {a.access.all_users && (
            <>
              {" "}
              <Badge>every user</Badge>
            </>
          )}
        </li>
      ))}
    </ul>
  );
}

function NewGroupForm({ onCreated }) {
  const form = useForm({ name: "" });
  const create = form.submit(async (v) => onCreated(await post("/groups", { name: v.name.trim() })));
  return (
    <form onSubmit={create} noValidate>
      <FormError error={form.errors._form} />
      <Field label="Name" {...form.bind("name")} autocomplete="off" hint={NAME_HINT} />
      <Submit busy={form.busy}>Create group</Submit>
    </form>
  );
}

function RenameForm({ group, onRenamed }) {
  const form = useForm({ name: group.name });
  const rename = form.submit(async (v) => {
    if (v.name.trim() === group.name) return;
    onRenamed(await patch(`/groups/${group.group_id}`, { name: v.name.trim() }));
  });
  return (
    <form class="field-row" onSubmit={rename} noValidate>
      <Field label="Name" {...form.bind("name")} autocomplete="off" hint={NAME_HINT} />
      <Submit busy={form.busy} kind="secondary">
        Rename
      </Submit>
      <FormError error={form.errors._form} />
    </form>
  );
}

function AddMemberForm({ group, users, onAdded }) {
  const outside = users.filter((u) => !group.members.includes(u.user_id));
  const form = useForm({ user_id: "" });
  const add = form.submit(async (v) => {
    if (!v.user_id) {
      form.setErrors({ user_id: "Choose a user to add." });
      return;
    }
    // api() itself: this route takes no body, and post()/put() send {}
    await api("PUT", `/groups/${group.group_id}/members/${v.user_id}`);
    form.set("user_id", "");
    onAdded(users.find((u) => u.user_id === v.user_id));
  });
  if (outside.length === 0) return <p class="muted">Every user is a member.</p>;
  return (
    <form class="field-row" onSubmit={add} noValidate>
      <Field label="Add member" type="select" {...form.bind("user_id")}>
        <option value="">Choose a user…</option>
        {outside.map((u) => (
          <option key={u.user_id} value={u.user_id}>
            {nameOf(u)}
          </option>
        ))}
      </Field>
      <Submit busy={form.busy} kind="secondary">
        Add
      </Submit>
      <FormError error={form.errors._form} />
    </form>
  );
}

function GroupDetail({ group, data, reload, onDelete }) {
  const status = useStatus();
  const members = data.users.filter((u) => group.members.includes(u.user_id));
  const remove = (user) =>
    status.run(async () => {
      await del(`/groups/${group.group_id}/members/${user.user_id}`);
      await reload();
    }, `${user.username} left ${group.name}.`);
  return (
    <div class="stack">
      {status.note}
      <RenameForm
        key={group.name}
        group={group}
        onRenamed={async (g) => {
          await reload();
          status.say(`The group is now called ${g.name}.`);
        }}
      />
      <section aria-labelledby="group-members">
        <h3 id="group-members">Members</h3>
        {members.length === 0 ? (
          <p class="muted">Nobody yet.</p>
        ) : (
          <ul class="member-list">
            {members.map((u) => (
              <li key={u.user_id}>
                <span>
                  {nameOf(u)} {u.disabled && <Badge kind="bad">Disabled</Badge>}
                </span>
                <button type="button" class="btn btn-ghost" disabled={status.busy} onClick={() => remove(u)} aria-label={`Remove ${u.username} from ${group.name}`}>
                  Remove
                </button>
              </li>
            ))}
          </ul>
        )}
        <AddMemberForm
          group={group}
          users={data.users}
          onAdded={async (u) => {
            await reload();
            status.say(`${u.username} joined ${group.name}.`);
          }}
        />
      </section>
      <section aria-labelledby="group-apps">
        <h3 id="group-apps">Apps this group opens</h3>
        {data.appsError ? <AppsUnknown error={data.appsError} /> : <AppLinks apps={appsOf(group, data.apps)} />}
        <p class="hint">Choose who opens an app on the app's own page, under its access.</p>
      </section>
      <div class="button-row">
        <button type="button" class="btn btn-danger" onClick={onDelete}>
          Delete group
        </button>
      </div>
    </div>
  );
}

function GroupTable({ data, onOpen, onDelete }) {
  return (
    <ListTable caption="Groups" columns={["Name", "Members", "Apps it opens"]} actions>
      {data.groups.map((g) => {
        const members = data.users.filter((u) => g.members.includes(u.user_id)).map((u) => u.username);
        return (
          <tr key={g.group_id}>
            <td data-label="Name">
              <strong>{g.name}</strong>
            </td>
            <td data-label="Members">{members.length ? members.join(", ") : <span class="muted">Nobody</span>}</td>
            <td data-label="Apps it opens">
              <AppLinks apps={appsOf(g, data.apps)} />
            </td>
            <td data-label="Actions" class="actions">
              <div class="row-actions">
                <button type="button" class="btn btn-secondary" onClick={() => onOpen(g)} aria-label={`Manage ${g.name}`}>
                  Manage
                </button>
                <button type="button" class="btn btn-danger" onClick={() => onDelete(g)} aria-label={`Delete ${g.name}`}>
                  Delete
                </button>
              </div>
            </td>
          </tr>
        );
      })}
    </ListTable>
  );
}

export function Groups() {
  const state = useAsync(load, []);
  const [dialog, setDialog] = useState(null);
  const status = useStatus();
  const close = () => setDialog(null);
  // the dialog follows the group as it is reloaded (renamed, members changed)
  const group = dialog && dialog.group && state.data ? state.data.groups.find((g) => g.group_id === dialog.group.group_id) || dialog.group : null;

  let title = "";
  let body = null;
  if (dialog && dialog.kind === "new") {
    title = "New group";
    body = (
      <NewGroupForm
        onCreated={async (g) => {
          await state.reload();
          status.say(`Group ${g.name} is created: add its members.`);
          setDialog({ kind: "manage", group: g });
        }}
      />
    );
  } else if (dialog && dialog.kind === "manage") {
    title = `Group ${group.name}`;
    body = <GroupDetail group={group} data={state.data} reload={state.reload} onDelete={() => setDialog({ kind: "delete", group })} />;
  } else if (dialog && dialog.kind === "delete") {
    const count = group.members.length;
    title = `Delete the group ${group.name}?`;
    body = (
      <ConfirmForm
        confirmLabel={`Delete ${group.name}`}
        onCancel={close}
        onConfirm={async () => {
          await del(`/groups/${group.group_id}`);
          close();
          status.say(`Group ${group.name} is deleted.`);
          await state.reload();
        }}
      >
        <p>
          Its {count === 1 ? "member stays a user" : `${count} members stay users`}, but they lose the apps they could open only through{" "}
          <strong>{group.name}</strong>. This cannot be undone.
        </p>
      </ConfirmForm>
    );
  }

  return (
    <>
      <PageHead title="Groups">
        <button type="button" class="btn btn-primary" onClick={() => setDialog({ kind: "new" })}>
          New group
        </button>
      </PageHead>
      <p class="muted">People in a group open the apps given to the group.</p>
      {status.note}
      <Loaded state={state} what="Loading groups">
        {(data) =>
          data.groups.length === 0 ? (
            <p>No groups yet. Make one, add people to it, then give it apps on each app's page.</p>
          ) : (
            <>
              {data.appsError && <AppsUnknown error={data.appsError} />}
              <GroupTable data={data} onOpen={(g) => setDialog({ kind: "manage", group: g })} onDelete={(g) => setDialog({ kind: "delete", group: g })} />
            </>
          )
        }
      </Loaded>
      <Dialog title={title} open={!!dialog} onClose={close} wide={dialog && dialog.kind === "manage"}>
        {body}
      </Dialog>
    </>
  );
}
