/** Public surface of the local stack, for the CLI and the tests. */
export { stackUp, stackDown, stackStatus, stackEnv } from './stack';
export type { ServiceStatus, StackEnv, StackOptions, ServiceName } from './stack';
export { runStackCommand, STACK_USAGE } from './cli';
