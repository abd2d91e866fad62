// Runs before the CLI loads anything else: the `agent` command's heap setting must be in place while the heap is
// still small (the young generation grows as modules load, and the setting only stops it growing further).
import { useAgentHeapSettings } from "../agent/heap";

// A plain look at the words (commander has not parsed them yet): another command that happens to carry the word
// "agent" as a value only gets a smaller young generation.
if (process.argv.slice(2).includes("agent")) useAgentHeapSettings();
