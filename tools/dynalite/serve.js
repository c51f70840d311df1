// dynalite in memory on 127.0.0.1, on the port given (0: any free one), tables ready at once.
// Prints "listening <port>" when it answers, so whoever started it knows where.
const dynalite = require('dynalite')

const port = Number(process.argv[2] || 0)
const server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 })
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`)
})
// Ends with whoever started it: stdin closing means the test run is over.
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
