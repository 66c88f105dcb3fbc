// An administrator who must use a second factor and has none enrols before anything else.
import { useSession } from "../session.js";
import { TotpEnrolment } from "./totp.jsx";

export function EnrolTotp() {
  const { refresh, signOut } = useSession();
  return (
    <div class="centered">
      <h1>Two-step sign-in is required</h1>
      <p>Administrators of this Homeport must use a second factor. Set it up to continue.</p>
      <TotpEnrolment onDone={refresh} doneLabel="Continue to the dashboard" />
      <p>
        <button type="button" class="btn btn-link" onClick={signOut}>
          Sign out
        </button>
      </p>
    </div>
  );
}
