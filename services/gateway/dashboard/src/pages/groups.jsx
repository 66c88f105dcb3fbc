export function Groups() { return <p>Being built.</p>; }
