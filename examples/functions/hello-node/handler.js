'use strict';
// Greets whoever the JSON body names, or the world.

exports.handle = (req) => {
  let name;
  try {
    name = req.json()?.name;
  } catch {
    // no JSON body: greet the world
  }
  if (typeof name === 'string' && name.trim()) {
    return { message: `Hello, ${name.trim()}!` };
  }
  return 'Hello from sedge!';
};
