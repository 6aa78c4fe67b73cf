// Command iotprov is the operator and device CLI (DESIGN.md §8): it creates the CA an
// operator uploads to Key Vault and proves to DPS, mints SAS credentials, and acts as a
// device against the provisioning service (register, poll, write the files a device
// connects to IoT Hub with).
//
// Every command is one row of the command table below, a path of one word ("beam") or
// two ("ca init"), implemented in the file of its group; every command answers --help,
// prints its results on standard output and its usage, progress and errors on standard
// error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	e := &env{ctx: ctx, out: os.Stdout, errOut: os.Stderr, now: time.Now}
	if err := run(e, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "iotprov: "+err.Error())
		os.Exit(2)
	}
}

// env is what a command may touch besides its flags, so tests can run commands in
// process with their own clock, output and Key Vault.
type env struct {
	ctx    context.Context
	out    io.Writer // results: what a script captures
	errOut io.Writer // progress and warnings
	now    func() time.Time
	// newVault makes the Key Vault client for ca upload; nil means azidentity's
	// credential and the real vault (vault.go).
	newVault vaultFactory
}

// command is one row of the table: a path of one or two words ("beam", "ca init"), a
// one-line summary for the usage, and the function that parses its own flags.
type command struct {
	path    string
	summary string
	run     func(e *env, args []string) error
}

// commands is the command table. Order is the order of the usage text.
var commands = []command{
	{"ca init", "create a root CA and the intermediate that signs devices, as files", caInit},
	{"ca upload", "store the signing CA bundle as a Key Vault secret", caUpload},
	{"ca verification-cert", "make the DPS / IoT Hub proof-of-possession certificate", caVerificationCert},
	{"device register", "act as a device: register, poll, write the certificate files", deviceRegister},
	{"sas device-key", "print a device's SAS key derived from the group key", sasDeviceKey},
	{"sas token", "print a SAS Authorization header value", sasToken},
	{"beam", "print SORACOM Beam signed headers as curl -H arguments", beam},
	{"jwt", "print a signed JWT Authorization header value", jwt},
	{"bootstrap-cert", "issue a bootstrap (factory) client certificate", bootstrapCert},
	{"devices add", "list a device in the device policy (allow-list, own interval)", devicesAdd},
	{"devices list", "print the device policy", devicesList},
	{"devices disable", "refuse a device's registrations (403 device_disabled)", devicesDisable},
	{"devices enable", "undo devices disable", devicesEnable},
}

// run dispatches args to a command of the table: a two-word path first, then a one-word
// one (a word is never both a command and a group; TestCommandTable checks that).
func run(e *env, args []string) error {
	if len(args) == 0 || isHelp(args[0]) || args[0] == "help" {
		printUsage(e.out, "")
		return nil
	}
	if len(args) >= 2 {
		if c := lookup(args[0] + " " + args[1]); c != nil {
			return c.run(e, args[2:])
		}
	}
	if c := lookup(args[0]); c != nil {
		return c.run(e, args[1:])
	}
	if hasGroup(args[0]) {
		printUsage(e.out, args[0])
		if len(args) == 1 || isHelp(args[1]) {
			return nil
		}
		return fmt.Errorf("unknown %s subcommand %q; see the usage above", args[0], args[1])
	}
	printUsage(e.errOut, "")
	return fmt.Errorf("unknown command %q; see the usage above", args[0])
}

func lookup(path string) *command {
	for i := range commands {
		if commands[i].path == path {
			return &commands[i]
		}
	}
	return nil
}

func hasGroup(word string) bool {
	for _, c := range commands {
		if strings.HasPrefix(c.path, word+" ") {
			return true
		}
	}
	return false
}

func isHelp(s string) bool { return s == "-h" || s == "-help" || s == "--help" }

// printUsage lists the commands, or only those of group when group is not empty.
func printUsage(w io.Writer, group string) {
	fmt.Fprintln(w, "iotprov — operator and device CLI for the iotprov provisioning service.")
	fmt.Fprintln(w, "\nUsage: iotprov <command> [flags]   (every command takes --help)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands {
		if group == "" || strings.HasPrefix(c.path, group+" ") {
			fmt.Fprintf(w, "  %-22s %s\n", c.path, c.summary)
		}
	}
}

// newFlagSet makes a command's flag set: errors and --help go to standard error (as Go's
// own tools do, so a script capturing a command's output never captures usage), with the
// command's usage line and description first, and parsing does not exit the process.
func newFlagSet(e *env, path, synopsis, description string) *flag.FlagSet {
	fs := flag.NewFlagSet("iotprov "+path, flag.ContinueOnError)
	fs.SetOutput(e.errOut)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: iotprov %s %s\n\n%s\n\nFlags:\n", path, synopsis, strings.TrimSpace(description))
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and refuses stray positional arguments, which are usually a
// flag typed without its dashes.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q (flags start with --)", fs.Name(), fs.Arg(0))
	}
	return nil
}
