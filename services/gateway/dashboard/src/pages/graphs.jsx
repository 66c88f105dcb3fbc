export function Graphs() { return <p>Being built.</p>; }
