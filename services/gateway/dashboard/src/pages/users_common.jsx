// Pieces the users, groups and profile pages share: a value to copy, a confirmation form,
// one-click actions that report how they went.
import { useRef, useState } from "preact/hooks";
import { ErrorNote } from "../ui/common.jsx";
import { FormError, Submit, useForm } from "../ui/form.jsx";

let uid = 0;

/** A read-only value (a link, a token) with a Copy button. */
export function CopyField({ label, value, hint }) {
  const id = useRef(`copy-${++uid}`).current;
  const input = useRef(null);
  const [said, setSaid] = useState("");
  const copy = async () => {
    input.current.select();
    try {
      await navigator.clipboard.writeText(value);
      setSaid("Copied.");
    } catch (_) {
      setSaid("This browser blocks copying here: the text is selected, press Ctrl+C (⌘C on a Mac).");
    }
  };
  return (
    <div class="field">
      <label for={id}>{label}</label>
      <div class="copy-row">
        <input id={id} ref={input} type="text" readOnly value={value} spellcheck={false} aria-describedby={hint ? `${id}-hint` : undefined} onFocus={(e) => e.currentTarget.select()} />
        <button type="button" class="btn btn-secondary" onClick={copy}>
          Copy
        </button>
      </div>
      {hint && (
        <p class="hint" id={`${id}-hint`}>
          {hint}
        </p>
      )}
      <p class="hint" role="status">
        {said}
      </p>
    </div>
  );
}

/** Asks before a destructive action: `children` says what is lost; `onConfirm` does it. */
export function ConfirmForm({ confirmLabel, onConfirm, onCancel, children, kind = "danger" }) {
  const form = useForm({});
  const go = form.submit(async () => {
    await onConfirm();
  });
  return (
    <form onSubmit={go} noValidate>
      {children}
      <FormError error={form.errors._form} />
      <div class="button-row">
        <Submit busy={form.busy} kind={kind}>
          {confirmLabel}
        </Submit>
        <button type="button" class="btn btn-ghost" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

/** Buttons that act at once: `run(fn, okMessage)`; `note` shows the outcome (or the API's error). */
export function useStatus() {
  const [state, setState] = useState({ ok: "", error: null, busy: false });
  const run = async (fn, ok) => {
    setState({ ok: "", error: null, busy: true });
    try {
      await fn();
      setState({ ok, error: null, busy: false });
    } catch (error) {
      setState({ ok: "", error, busy: false });
    }
  };
  const say = (ok) => setState({ ok, error: null, busy: false });
  const note = (
    <>
      <div role="status">{state.ok && <p class="ok-note">{state.ok}</p>}</div>
      <ErrorNote error={state.error} />
    </>
  );
  return { run, say, note, busy: state.busy };
}

/** "Alice (alice)" or "alice". */
export function nameOf(user) {
  return user.display_name ? `${user.display_name} (${user.username})` : user.username;
}

export const byName = (key) => (a, b) => String(a[key]).localeCompare(String(b[key]));
