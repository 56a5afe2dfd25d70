// Password comparison in time independent of where the strings differ, shared
// by IDENTIFY and the HTTP bearer check.

export function passwordMatches(given: string, expected: string): boolean {
  let diff = given.length ^ expected.length;
  for (let i = 0; i < expected.length; i++) diff |= (given.charCodeAt(i) || 0) ^ expected.charCodeAt(i);
  return diff === 0;
}
