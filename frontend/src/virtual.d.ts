/** The README's "Join the swarm" section (vite.config.ts makes it at build time). */
declare module 'virtual:join-the-swarm' {
  const section: string;
  export default section;
}
