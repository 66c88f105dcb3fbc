// The dialogs of the Users page: invite, add, edit, reset a password.
import { useState } from "preact/hooks";
import { api, patch, post } from "../api.js";
import { formatTime } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import { CopyField } from "./users_common.jsx";

const USERNAME_HINT = "2 to 32 characters: a letter, then letters, digits, . _ or -";

/** Checkboxes for choosing groups; `error` is the API's message about them. */
function GroupChoice({ groups, chosen, onChange, error }) {
  const toggle = (id, on) => onChange(on ? [...chosen, id] : chosen.filter((g) => g !== id));
  return (
    <fieldset class="choices">
      <legend>Groups</legend>
      {groups.length === 0 && <p class="hint">No groups yet: make them under Groups.</p>}
      {groups.map((g) => (
        <Field key={g.group_id} type="checkbox" label={g.name} name={`group-${g.group_id}`} value={chosen.includes(g.group_id)} onValue={(on) => toggle(g.group_id, on)} />
      ))}
      {error && (
        <p class="field-error" role="alert">
          {error}
        </p>
      )}
    </fieldset>
  );
}

export function InviteForm({ groups, onInvited, onClose }) {
  const [invited, setInvited] = useState(null);
  const form = useForm({ email: "", is_admin: false, groups: [] });
  const invite = form.submit(async (v) => {
    const email = v.email.trim();
    const answer = await post("/invitations", { email, is_admin: v.is_admin, groups: v.groups });
    setInvited({ ...answer, email });
    onInvited(email);
  });
  if (invited) {
    const link = `${window.location.origin}/#/invite/${encodeURIComponent(invited.token)}`;
    const terms = (
      <p>
        The link works once, until <strong>{formatTime(invited.expires_at)}</strong>. The invited person must sign up with the same email,{" "}
        <strong>{invited.email}</strong>. It is not shown again.
      </p>
    );
    // Emailed: the link stays at hand (a mail can land in spam). Not emailed: why, and the link.
    const handOver = invited.emailed ? (
      <>
        <p class="ok-note" role="status">
          An invitation was emailed to <strong>{invited.email}</strong>.
        </p>
        {terms}
        <details class="more">
          <summary>Give them the link another way</summary>
          <CopyField label="Invitation link" value={link} />
        </details>
      </>
    ) : (
      <>
        <p class="notice" role="status">
          Invitation created for <strong>{invited.email}</strong>, but it could not be emailed: {invited.email_error || "no reason was given"}. Give them this
          link yourself.
        </p>
        <CopyField label="Invitation link" value={link} />
        {terms}
      </>
    );
    return (
      <div class="stack">
        {handOver}
        <div class="button-row">
          <button type="button" class="btn btn-primary" onClick={onClose}>
            Done
          </button>
          <button
            type="button"
            class="btn btn-ghost"
            onClick={() => {
              form.setValues({ email: "", is_admin: false, groups: [] });
              setInvited(null);
            }}
          >
            Invite someone else
          </button>
        </div>
      </div>
    );
  }
  return (
    <form onSubmit={invite} noValidate>
      <p>Homeport emails them a link (you get it too); with it they choose their username and password.</p>
      <FormError error={form.errors._form} />
      <Field label="Email" type="email" {...form.bind("email")} autocomplete="off" />
      <Field label="Administrator" type="checkbox" {...form.bind("is_admin")} hint="Administrators manage apps, users, domains and the platform." />
      <GroupChoice groups={groups} chosen={form.values.groups} onChange={(g) => form.set("groups", g)} error={form.errors.groups} />
      <Submit busy={form.busy}>Create invitation link</Submit>
    </form>
  );
}

export function AddUserForm({ onAdded }) {
  const form = useForm({ username: "", email: "", display_name: "", password: "", confirm: "", is_admin: false });
  const add = form.submit(async (v) => {
    if (v.password !== v.confirm) {
      form.setErrors({ confirm: "The two passwords differ." });
      return;
    }
    const body = { username: v.username.trim(), email: v.email.trim(), password: v.password, is_admin: v.is_admin };
    if (v.display_name.trim()) body.display_name = v.display_name.trim();
    await post("/users", body);
    onAdded(body.username);
  });
  return (
    <form onSubmit={add} noValidate>
      <p>Create the account yourself and tell them the password; they can change it in their profile.</p>
      <FormError error={form.errors._form} />
      <Field label="Username" {...form.bind("username")} autocomplete="off" hint={USERNAME_HINT} />
      <Field label="Email" type="email" {...form.bind("email")} autocomplete="off" />
      <Field label="Display name (optional)" {...form.bind("display_name")} autocomplete="off" />
      <Field label="Password" type="password" {...form.bind("password")} autocomplete="new-password" hint="At least 8 characters; 15 or more is better." />
      <Field label="Password again" type="password" {...form.bind("confirm")} autocomplete="new-password" />
      <Field label="Administrator" type="checkbox" {...form.bind("is_admin")} />
      <Submit busy={form.busy}>Add user</Submit>
    </form>
  );
}

/** Only what changed is sent; an emptied display name is cleared. */
export function EditUserForm({ user, self, onSaved, onCancel }) {
  const form = useForm({ display_name: user.display_name || "", email: user.email, is_admin: user.is_admin });
  const save = form.submit(async (v) => {
    const body = {};
    const name = v.display_name.trim();
    if (name !== (user.display_name || "")) body.display_name = name || null;
    if (v.email.trim() !== user.email) body.email = v.email.trim();
    if (v.is_admin !== user.is_admin) body.is_admin = v.is_admin;
    if (Object.keys(body).length === 0) {
      onCancel();
      return;
    }
    onSaved(await patch(`/users/${user.user_id}`, body));
  });
  return (
    <form onSubmit={save} noValidate>
      <FormError error={form.errors._form} />
      <Field label="Display name" {...form.bind("display_name")} autocomplete="off" hint="Leave empty to show the username." />
      <Field label="Email" type="email" {...form.bind("email")} autocomplete="off" />
      <Field
        label="Administrator"
        type="checkbox"
        {...form.bind("is_admin")}
        disabled={self}
        hint={self ? "You cannot take away your own administrator role: another administrator can." : "Administrators manage apps, users, domains and the platform."}
      />
      <div class="button-row">
        <Submit busy={form.busy}>Save changes</Submit>
        <button type="button" class="btn btn-ghost" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

export function ResetPasswordForm({ user, onClose }) {
  const [reset, setReset] = useState(null);
  const form = useForm({});
  // api() itself: this route takes no body, and post()/put() send {}
  const create = form.submit(async () => setReset(await api("POST", `/users/${user.user_id}/password-reset`)));
  if (reset) {
    const link = `${window.location.origin}/#/reset/${encodeURIComponent(reset.token)}`;
    return (
      <div class="stack">
        <CopyField label="Password reset link" value={link} />
        <p>
          Give it to {user.username}: it works once, until <strong>{formatTime(reset.expires_at)}</strong>. It is not shown again.
        </p>
        <button type="button" class="btn btn-primary" onClick={onClose}>
          Done
        </button>
      </div>
    );
  }
  return (
    <form onSubmit={create} noValidate>
      <p>
        Create a link with which <strong>{user.username}</strong> chooses a new password. It works once, for one hour; their current password
        works until then.
      </p>
      <FormError error={form.errors._form} />
      <div class="button-row">
        <Submit busy={form.busy}>Create reset link</Submit>
        <button type="button" class="btn btn-ghost" onClick={onClose}>
          Cancel
        </button>
      </div>
    </form>
  );
}
