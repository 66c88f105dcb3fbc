// Signing in (with the TOTP step when the account has one), accepting an invitation,
// and resetting a forgotten password.
import { useEffect, useRef, useState } from "preact/hooks";
import { post } from "../api.js";
import { navigate } from "../router.js";
import { useSession } from "../session.js";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";

function Card({ title, children }) {
  return (
    <div class="centered card-page">
      <h1>{title}</h1>
      {children}
    </div>
  );
}

/** What the password step says when the server refused the code step: any 401 there (a wrong
 * code too) has used up the ticket, so only a new sign-in can go on. */
function refusal(e) {
  if (/ticket/.test(e.message)) return "This sign-in took too long or was already used. Sign in again.";
  return "That code was not accepted. Sign in again.";
}

function TotpStep({ ticket, onDone, onRestart }) {
  const [recovery, setRecovery] = useState(false);
  const form = useForm({ code: "", recovery_code: "" });
  const send = form.submit(async (v) => {
    const body = recovery ? { ticket, recovery_code: v.recovery_code.trim() } : { ticket, code: v.code.replace(/\s/g, "") };
    try {
      await post("/session/totp", body, { quiet401: true });
    } catch (e) {
      if (e.status !== 401) throw e;
      onRestart(refusal(e));
      return;
    }
    onDone();
  });
  return (
    <form onSubmit={send} noValidate>
      <FormError error={form.errors._form} />
      {recovery ? (
        <Field label="Recovery code" {...form.bind("recovery_code")} autocomplete="off" hint="One of the codes you saved when you set up two-step sign-in" />
      ) : (
        <Field label="Code from your authenticator app" {...form.bind("code")} inputMode="numeric" autocomplete="one-time-code" autofocus />
      )}
      <Submit busy={form.busy}>Sign in</Submit>
      <p>
        <button type="button" class="btn btn-link" onClick={() => setRecovery(!recovery)}>
          {recovery ? "Use a code from the app" : "Use a recovery code"}
        </button>{" "}
        <button type="button" class="btn btn-link" onClick={() => onRestart(null)}>
          Start again
        </button>
      </p>
    </form>
  );
}

/** Where to go once signed in when an app sent the browser here (`#/login?next=...`): back to
 * the edge's sign-in for that app, on this origin only. */
function appReturn() {
  const query = window.location.hash.split("?")[1] || "";
  const next = new URLSearchParams(query).get("next") || "";
  return next.startsWith("/.homeport/signin?") ? next : null;
}

export function Login({ expired = false }) {
  const { refresh } = useSession();
  const [ticket, setTicket] = useState(null);
  const [forgot, setForgot] = useState(false);
  const [restarts, setRestarts] = useState(0);
  const passwordForm = useRef(null);
  const form = useForm({ username: "", password: "" });
  // back from the code step: the username kept, the password to type again
  const restart = (message) => {
    setTicket(null);
    form.setValues((v) => ({ ...v, password: "" }));
    form.setErrors(message ? { _form: message } : {});
    setRestarts((n) => n + 1);
  };
  useEffect(() => {
    if (restarts && passwordForm.current) passwordForm.current.querySelector("input[type=password]").focus();
  }, [restarts]);
  const done = async () => {
    const back = appReturn();
    if (back) {
      window.location.assign(back);
      return;
    }
    await refresh();
    const route = window.location.hash;
    if (!route || route.startsWith("#/login") || route.startsWith("#/setup") || route === "#/") navigate("/apps", { replace: true });
  };
  const signIn = form.submit(async (v) => {
    const answer = await post("/session", { username: v.username.trim(), password: v.password }, { quiet401: true });
    if (answer.totp_required) setTicket(answer.ticket);
    else await done();
  });
  if (forgot) return <ForgotPassword onBack={() => setForgot(false)} />;
  return (
    <Card title="Sign in to Homeport">
      {expired && <p class="notice">Your session ended. Sign in again.</p>}
      {!expired && appReturn() && <p class="notice">Sign in to open the app you asked for.</p>}
      {ticket ? (
        <TotpStep ticket={ticket} onDone={done} onRestart={restart} />
      ) : (
        <form ref={passwordForm} onSubmit={signIn} noValidate>
          <FormError error={form.errors._form} />
          <Field label="Username" {...form.bind("username")} autocomplete="username" autofocus />
          <Field label="Password" type="password" {...form.bind("password")} autocomplete="current-password" />
          <Submit busy={form.busy}>Sign in</Submit>
          <p>
            <button type="button" class="btn btn-link" onClick={() => setForgot(true)}>
              Forgot your password?
            </button>
          </p>
        </form>
      )}
    </Card>
  );
}

function ForgotPassword({ onBack }) {
  const [sent, setSent] = useState(false);
  const form = useForm({ email: "" });
  const send = form.submit(async (v) => {
    await post("/password-reset", { email: v.email.trim() });
    setSent(true);
  });
  return (
    <Card title="Reset your password">
      {sent ? (
        <p role="status">
          If an account has this email, a link to reset its password is on its way to it by email (look in the spam folder too). It works once, for one
          hour.
        </p>
      ) : (
        <form onSubmit={send} noValidate>
          <FormError error={form.errors._form} />
          <Field label="Email of your account" type="email" {...form.bind("email")} autocomplete="email" />
          <Submit busy={form.busy}>Send the link</Submit>
        </form>
      )}
      <button type="button" class="btn btn-link" onClick={onBack}>
        Back to sign in
      </button>
    </Card>
  );
}

export function AcceptInvitation({ token }) {
  const [done, setDone] = useState(false);
  const form = useForm({ email: "", username: "", display_name: "", password: "", confirm: "" });
  const accept = form.submit(async (v) => {
    if (v.password !== v.confirm) {
      form.setErrors({ confirm: "The two passwords differ." });
      return;
    }
    const body = { token, email: v.email.trim(), username: v.username.trim(), password: v.password };
    if (v.display_name.trim()) body.display_name = v.display_name.trim();
    await post("/invitations/accept", body);
    setDone(true);
  });
  if (!token) return <Card title="Invitation">This link is incomplete: open the whole link from your invitation.</Card>;
  if (done) {
    return (
      <Card title="Your account is ready">
        <p role="status">Sign in with your username and the password you chose.</p>
        <a class="btn btn-primary" href="#/login">
          Sign in
        </a>
      </Card>
    );
  }
  return (
    <Card title="Join Homeport">
      <form onSubmit={accept} noValidate>
        <p>You were invited to this Homeport. Choose a username and a password.</p>
        <FormError error={form.errors._form} />
        <Field label="Your email (the one invited)" type="email" {...form.bind("email")} autocomplete="email" />
        <Field label="Username" {...form.bind("username")} autocomplete="username" hint="2 to 32 characters: a letter, then letters, digits, . _ or -" />
        <Field label="Display name (optional)" {...form.bind("display_name")} autocomplete="name" />
        <Field label="Password" type="password" {...form.bind("password")} autocomplete="new-password" hint="At least 8 characters; 15 or more is better." />
        <Field label="Password again" type="password" {...form.bind("confirm")} autocomplete="new-password" />
        <Submit busy={form.busy}>Create my account</Submit>
      </form>
    </Card>
  );
}

export function ResetPassword({ token }) {
  const [done, setDone] = useState(false);
  const form = useForm({ new_password: "", confirm: "" });
  const reset = form.submit(async (v) => {
    if (v.new_password !== v.confirm) {
      form.setErrors({ confirm: "The two passwords differ." });
      return;
    }
    await post("/password-reset/complete", { token, new_password: v.new_password });
    setDone(true);
  });
  if (done) {
    return (
      <Card title="Password changed">
        <p role="status">Sign in with your new password.</p>
        <a class="btn btn-primary" href="#/login">
          Sign in
        </a>
      </Card>
    );
  }
  return (
    <Card title="Choose a new password">
      <form onSubmit={reset} noValidate>
        <FormError error={form.errors._form} />
        <Field label="New password" type="password" {...form.bind("new_password")} autocomplete="new-password" hint="At least 8 characters; 15 or more is better." />
        <Field label="New password again" type="password" {...form.bind("confirm")} autocomplete="new-password" />
        <Submit busy={form.busy}>Change password</Submit>
      </form>
    </Card>
  );
}
