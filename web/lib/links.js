// Where a node's input really comes from: across legacy Reroute nodes and subgraph boundaries (into a
// subgraph node's inside through its output, out of a subgraph through its input), read through the
// frontend's link API (getInputLink; the input's link id only on frontends that lack it).

const MAX_HOPS = 64;

// The link (origin_id, origin_slot) into input `slot` of `node`, or null.
function linkInto(node, slot) {
  // A subgraph node's own getInputLink answers for its inside (the link into its output); the plain node's
  // method answers for the link into its input, which is what is wanted here.
  const base = globalThis.LiteGraph?.LGraphNode?.prototype?.getInputLink;
  if (node.isSubgraphNode?.() && base) return base.call(node, slot) ?? null;
  if (typeof node.getInputLink === "function") return node.getInputLink(slot) ?? null;
  const id = node.inputs?.[slot]?.link;
  return id == null ? null : node.graph?.links?.[id] ?? null;
}

// The subgraph nodes anywhere in the workflow that show `subgraph`.
function instancesOf(subgraph) {
  const root = subgraph.rootGraph ?? subgraph;
  const graphs = [root, ...(root.subgraphs?.values?.() ?? [])];
  return graphs.flatMap((g) => (g.nodes ?? []).filter((n) => n.isSubgraphNode?.() && n.subgraph === subgraph));
}

// -> { node, slot } that feeds input `inputName` of `node`, null when nothing is connected; throws with the
// reason when the source cannot be known (a subgraph input fed differently by several subgraph nodes).
export function sourceOf(node, inputName) {
  const slot = node.inputs?.findIndex((input) => input.name === inputName) ?? -1;
  if (slot < 0) return null;
  const hosts = [];  // subgraph nodes entered on the way in, innermost last
  let graph = node.graph, link = linkInto(node, slot);
  for (let hop = 0; link && graph; hop++) {
    if (hop > MAX_HOPS) throw new Error(`${inputName} input: the links loop`);
    if (graph.inputNode && link.origin_id === graph.inputNode.id) {  // from the subgraph's input: go out
      let host = hosts.pop();
      if (!host) {
        const instances = instancesOf(graph);
        if (instances.length !== 1) {
          const input = graph.inputNode.slots?.[link.origin_slot]?.name ?? link.origin_slot;
          throw new Error(`${inputName} comes in through subgraph input ${input} of ${instances.length} subgraph nodes:`
            + " open one of them to see its curve");
        }
        host = instances[0];
      }
      graph = host.graph;
      link = linkInto(host, link.origin_slot);
      continue;
    }
    const origin = graph.getNodeById(link.origin_id);
    if (!origin) return null;
    if (origin.isSubgraphNode?.()) {  // from a subgraph node's output: go in
      hosts.push(origin);
      graph = origin.subgraph;
      const output = graph.outputNode?.slots?.[link.origin_slot];
      link = output?.linkIds?.length ? graph.getLink(output.linkIds[0]) ?? null : null;
      continue;
    }
    if (origin.type === "Reroute") {
      link = linkInto(origin, 0);
      continue;
    }
    return { node: origin, slot: link.origin_slot };
  }
  return null;
}
