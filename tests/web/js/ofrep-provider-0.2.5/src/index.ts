export * from './lib/ofrep-provider';
