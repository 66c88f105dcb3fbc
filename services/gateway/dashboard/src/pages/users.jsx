export function Users() { return <p>Being built.</p>; }
