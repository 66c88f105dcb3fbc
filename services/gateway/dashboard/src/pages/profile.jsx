export function Profile() { return <p>Being built.</p>; }
