// The signed-in user's own profile: details, password, two-step sign-in, mail, API tokens,
// sessions.
import { useState } from "preact/hooks";
import { get, patch, post } from "../api.js";
import { useSession } from "../session.js";
import { Badge, Loaded, PageHead, useAsync } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import { Mail } from "./profile_mail.jsx";
import { TotpEnrolment } from "./totp.jsx";
import { Sessions, Tokens } from "./users_profile.jsx";

function Section({ id, title, children }) {
  return (
    <section class="panel profile-section" aria-labelledby={id}>
      <h2 id={id}>{title}</h2>
      {children}
    </section>
  );
}

function Saved({ text }) {
  return <div role="status">{text && <p class="ok-note">{text}</p>}</div>;
}

function Details({ me, refresh }) {
  const [saved, setSaved] = useState("");
  const form = useForm({ display_name: me.display_name || "", email: me.email });
  const save = form.submit(async (v) => {
    setSaved("");
    const body = {};
    const name = v.display_name.trim();
    if (name !== (me.display_name || "")) body.display_name = name || null;
    if (v.email.trim() !== me.email) body.email = v.email.trim();
    if (Object.keys(body).length === 0) {
      setSaved("Nothing changed.");
      return;
    }
    await patch("/profile", body);
    await refresh();
    setSaved("Your details are saved.");
  });
  return (
    <form onSubmit={save} noValidate>
      <p>
        Username: <strong>{me.username}</strong> {me.is_admin && <Badge kind="info">Administrator</Badge>}
      </p>
      <FormError error={form.errors._form} />
      <Field label="Display name" {...form.bind("display_name")} autocomplete="name" hint="Leave empty to show your username." />
      <Field label="Email" type="email" {...form.bind("email")} autocomplete="email" />
      <Saved text={saved} />
      <Submit busy={form.busy}>Save details</Submit>
    </form>
  );
}

function Password({ onChanged }) {
  const [saved, setSaved] = useState("");
  const form = useForm({ current_password: "", new_password: "", confirm: "" });
  const change = form.submit(async (v) => {
    setSaved("");
    if (v.new_password !== v.confirm) {
      form.setErrors({ confirm: "The two passwords differ." });
      return;
    }
    await post("/profile/password", { current_password: v.current_password, new_password: v.new_password });
    form.setValues({ current_password: "", new_password: "", confirm: "" });
    setSaved("Your password is changed. Your other sessions are signed out.");
    onChanged();
  });
  return (
    <form onSubmit={change} noValidate>
      <p class="hint">Changing it signs you out everywhere else; this session stays.</p>
      <FormError error={form.errors._form} />
      <Field label="Current password" type="password" {...form.bind("current_password")} autocomplete="current-password" />
      <Field label="New password" type="password" {...form.bind("new_password")} autocomplete="new-password" hint="At least 8 characters; 15 or more is better. A passphrase works well." />
      <Field label="New password again" type="password" {...form.bind("confirm")} autocomplete="new-password" />
      <Saved text={saved} />
      <Submit busy={form.busy}>Change password</Submit>
    </form>
  );
}

function TurnOffTotp({ onOff }) {
  const form = useForm({ current_password: "" });
  const off = form.submit(async (v) => {
    await post("/profile/totp/disable", { current_password: v.current_password });
    onOff();
  });
  return (
    <form onSubmit={off} noValidate>
      <FormError error={form.errors._form} />
      <Field label="Your password" type="password" {...form.bind("current_password")} autocomplete="current-password" hint="To turn two-step sign-in off, confirm it is you." />
      <Submit busy={form.busy} kind="danger">
        Turn off
      </Submit>
    </form>
  );
}

function TwoStep() {
  const state = useAsync(() => get("/profile/totp"), []);
  const [said, setSaid] = useState("");
  const [enrolling, setEnrolling] = useState(false);
  return (
    <>
      <Saved text={said} />
      <Loaded state={state} what="Loading">
        {(totp) => {
          if (!totp.enabled) {
            return (
              <>
                {!enrolling && (
                  <p>
                    <Badge kind="warn">Off</Badge> Signing in asks only for your password.
                  </p>
                )}
                {/* a new TotpEnrolment each time, so an abandoned one starts over */}
                {enrolling ? (
                  <TotpEnrolment
                    autoStart
                    onDone={async () => {
                      setEnrolling(false);
                      setSaid("Two-step sign-in is on.");
                      await state.reload();
                    }}
                  />
                ) : (
                  <button
                    type="button"
                    class="btn btn-primary"
                    onClick={() => {
                      setSaid("");
                      setEnrolling(true);
                    }}
                  >
                    Set up two-step sign-in
                  </button>
                )}
              </>
            );
          }
          const left = totp.recovery_codes_left;
          return (
            <>
              <p>
                <Badge kind="ok">On</Badge> Signing in asks for a code from your authenticator app.
              </p>
              <p>
                <Badge kind={left <= 2 ? "warn" : "neutral"}>
                  {left} recovery code{left === 1 ? "" : "s"} left
                </Badge>
                {left <= 2 && " To get new ones, turn two-step sign-in off and set it up again."}
              </p>
              <TurnOffTotp
                onOff={async () => {
                  setSaid("Two-step sign-in is off.");
                  await state.reload();
                }}
              />
            </>
          );
        }}
      </Loaded>
    </>
  );
}

export function Profile() {
  const { me, refresh } = useSession();
  const [sessionsVersion, setSessionsVersion] = useState(0);
  return (
    <>
      <PageHead title="Your profile" />
      <div class="grid-2">
        <Section id="profile-details" title="Your details">
          <Details me={me} refresh={refresh} />
        </Section>
        <Section id="profile-password" title="Password">
          <Password onChanged={() => setSessionsVersion((v) => v + 1)} />
        </Section>
      </div>
      <Section id="profile-totp" title="Two-step sign-in">
        <TwoStep />
      </Section>
      <Section id="profile-mail" title="Mail">
        <Mail />
      </Section>
      <Section id="profile-tokens" title="API tokens">
        <Tokens />
      </Section>
      <Section id="profile-sessions" title="Sessions">
        <Sessions version={sessionsVersion} />
      </Section>
    </>
  );
}
