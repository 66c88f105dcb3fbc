export function Activity() { return <p>Being built.</p>; }
