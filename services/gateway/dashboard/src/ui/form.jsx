// Forms: labelled fields, the API's field error shown next to its field, one form-level error.
import { useRef, useState } from "preact/hooks";
import { ApiError } from "../api.js";

let uid = 0;
const nextId = (name) => `f-${name.replace(/[^A-Za-z0-9_-]/g, "-")}-${++uid}`;

/** The form field an API `field` (e.g. "access.groups[0]") belongs to, among `names`. */
export function fieldOf(field, names) {
  if (!field) return null;
  if (names.includes(field)) return field;
  const head = field.split(/[.[]/)[0];
  if (names.includes(head)) return head;
  const tail = field.replace(/\[\d+\]$/, "").split(".").pop();
  if (names.includes(tail)) return tail;
  const match = names.find((n) => field.startsWith(`${n}.`) || field.startsWith(`${n}[`));
  return match || null;
}

/** Values, errors and a submit wrapper for one form. */
export function useForm(initial) {
  const [values, setValues] = useState(initial);
  const [errors, setErrors] = useState({});
  const [busy, setBusy] = useState(false);
  const names = Object.keys(initial);
  const set = (name, value) => {
    setValues((v) => ({ ...v, [name]: value }));
    setErrors((e) => (e[name] || e._form ? { ...e, [name]: undefined } : e));
  };
  const bind = (name) => ({
    name,
    value: values[name],
    error: errors[name],
    onValue: (value) => set(name, value),
  });
  const submit = (fn) => async (ev) => {
    if (ev) ev.preventDefault();
    if (busy) return;
    setBusy(true);
    setErrors({});
    try {
      await fn(values);
    } catch (e) {
      setErrors(errorsOf(e, names));
    } finally {
      setBusy(false);
    }
  };
  return { values, set, setValues, errors, setErrors, bind, submit, busy };
}

/** `{field: message}` or `{_form: message}` for an error thrown by a submit. */
export function errorsOf(e, names) {
  if (e instanceof ApiError) {
    const name = fieldOf(e.field, names);
    if (name) return { [name]: e.message };
    const where = e.field ? ` (${e.field})` : "";
    return { _form: `${e.message}${where}` };
  }
  console.error(e);
  return { _form: String((e && e.message) || e) };
}

export function Field({ label, name, value, onValue, error, hint, type = "text", children, ...rest }) {
  const id = useRef(nextId(name)).current;
  const described = [error ? `${id}-error` : null, hint ? `${id}-hint` : null].filter(Boolean).join(" ");
  const common = {
    id,
    name,
    "aria-invalid": error ? "true" : undefined,
    "aria-describedby": described || undefined,
    ...rest,
  };
  let input;
  if (type === "select") {
    input = (
      <select {...common} value={value} onChange={(e) => onValue(e.currentTarget.value)}>
        {children}
      </select>
    );
  } else if (type === "checkbox") {
    input = <input {...common} type="checkbox" checked={!!value} onChange={(e) => onValue(e.currentTarget.checked)} />;
  } else if (type === "textarea") {
    input = <textarea {...common} value={value} onInput={(e) => onValue(e.currentTarget.value)} />;
  } else {
    input = <input {...common} type={type} value={value ?? ""} onInput={(e) => onValue(e.currentTarget.value)} />;
  }
  return (
    <div class={`field${type === "checkbox" ? " field-check" : ""}${error ? " has-error" : ""}`}>
      {type === "checkbox" ? (
        <label for={id}>
          {input} {label}
        </label>
      ) : (
        <>
          <label for={id}>{label}</label>
          {input}
        </>
      )}
      {hint && (
        <p class="hint" id={`${id}-hint`}>
          {hint}
        </p>
      )}
      {error && (
        <p class="field-error" id={`${id}-error`} role="alert">
          {error}
        </p>
      )}
    </div>
  );
}

export function FormError({ error }) {
  if (!error) return null;
  return (
    <div class="form-error" role="alert">
      {error}
    </div>
  );
}

export function Submit({ busy, children, kind = "primary", ...rest }) {
  return (
    <button type="submit" class={`btn btn-${kind}`} disabled={busy} aria-busy={busy ? "true" : undefined} {...rest}>
      {busy ? "Working…" : children}
    </button>
  );
}
