/**
 * The swarm panel's picture: each server's blocks as segments of a bar (percentages of the model's
 * blocks), the current chat's route marked, and what the panel should suggest (out of capacity, slow).
 */
import type { RouteHop, SwarmResponse, SwarmServer } from '../types/protocol';

export interface Segment {
  /** Percent of the bar's width. */
  left: number;
  width: number;
  /** Blocks `start` to `end - 1`. */
  start: number;
  end: number;
  /** The current chat's route went through this server for these blocks. */
  onRoute: boolean;
}

export interface ServerRow {
  server: SwarmServer;
  segments: Segment[];
  onRoute: boolean;
}

function percent(value: number, total: number): number {
  return Math.round((value / total) * 10000) / 100;
}

/** Blocks `a`-`b` (end exclusive) as people count them: "blocks 0–29" for [0, 30). */
export function blockRange(start: number, end: number): string {
  return end - start === 1 ? `block ${start}` : `blocks ${start}–${end - 1}`;
}

/** Rows of the panel: each server's spans as bar segments, and which of them the route used. */
export function serverRows(swarm: SwarmResponse, route: RouteHop[] | undefined): ServerRow[] {
  const total = Math.max(swarm.blocks_total, 1);
  return swarm.servers.map((server) => {
    const hops = (route ?? []).filter((hop) => hop.peer_id === server.peer_id);
    const segments = server.spans.map(([start, end]) => ({
      left: percent(start, total),
      width: percent(end - start, total),
      start,
      end,
      onRoute: hops.some((hop) => hop.start < end && start < hop.end),
    }));
    return { server, segments, onRoute: hops.length > 0 };
  });
}

/** The route of a chat's latest answer that has one. */
export function lastRoute(messages: readonly { route?: RouteHop[] }[]): RouteHop[] | undefined {
  for (let i = messages.length - 1; i >= 0; i--) {
    const route = messages[i]?.route;
    if (route) return route;
  }
  return undefined;
}

/** Blocks no online server holds (a gap in the swarm: answers cannot be generated). */
export function missingBlocks(swarm: SwarmResponse): number[] {
  const missing: number[] = [];
  for (let block = 0; block < swarm.blocks_total; block++) {
    const held = swarm.servers.some(
      (s) => s.state === 'online' && s.spans.some(([start, end]) => start <= block && block < end),
    );
    if (!held) missing.push(block);
  }
  return missing;
}

/** Out of capacity: a block missing, or some block whose every online server announced no cache left. */
export function outOfCapacity(swarm: SwarmResponse): boolean {
  if (missingBlocks(swarm).length > 0) return true;
  for (let block = 0; block < swarm.blocks_total; block++) {
    const holders = swarm.servers.filter(
      (s) => s.state === 'online' && s.spans.some(([start, end]) => start <= block && block < end),
    );
    if (holders.length > 0 && holders.every((s) => s.cache_tokens_left === 0)) return true;
  }
  return false;
}

/** The route as text: "...abc123 blocks 0–15 → ...def456 blocks 16–29". */
export function describeRoute(route: RouteHop[] | undefined, shortId: (peerId: string) => string): string {
  if (!route || route.length === 0) return '';
  return route.map((hop) => `${shortId(hop.peer_id)} ${blockRange(hop.start, hop.end)}`).join(' → ');
}

/** A `## Heading` section of a Markdown document (without its heading), up to the next `## `; '' if absent. */
export function markdownSection(markdown: string, heading: string): string {
  const lines = markdown.split('\n');
  const start = lines.findIndex((line) => line.trim() === `## ${heading}`);
  if (start < 0) return '';
  let end = lines.length;
  let fenced = false; // a '## ' line inside a code block is code
  for (let i = start + 1; i < lines.length; i++) {
    const line = lines[i] ?? '';
    if (line.startsWith('```')) fenced = !fenced;
    else if (!fenced && line.startsWith('## ')) {
      end = i;
      break;
    }
  }
  return unwrap(lines.slice(start + 1, end).filter((line) => !line.startsWith('!['))) // pictures are the README's own
    .join('\n')
    .trim();
}

/** The README's paragraphs are wrapped at 100 columns; the page renders line breaks, so join them (not code). */
function unwrap(lines: string[]): string[] {
  const out: string[] = [];
  let fenced = false;
  let joinable = false;
  for (const line of lines) {
    if (line.startsWith('```')) fenced = !fenced;
    const starts = /^\s*$|^\s*([-*+] |\d+\. |#|\||```)/.test(line);
    if (!fenced && joinable && !starts && !line.startsWith('```')) out[out.length - 1] += ` ${line.trim()}`;
    else out.push(line);
    joinable = !fenced && !line.startsWith('```') && line.trim() !== '';
  }
  return out;
}
