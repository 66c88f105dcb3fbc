// Who is signed in: the profile, shared by every page through a context.
import { createContext } from "preact";
import { useContext } from "preact/hooks";

export const Session = createContext({ me: null, refresh: async () => {}, signOut: async () => {} });
export const useSession = () => useContext(Session);
