// Command devstack is `make run`: it brings up the whole local stack in the foreground —
// Azurite, the DPS emulator, mosquitto as the IoT Hub stand-in, and the handler in
// local-runner mode on 127.0.0.1:7071 — and stops all of it on Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/iotprov/iotprov/internal/devstack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "devstack: "+err.Error())
		os.Exit(1)
	}
}

func run() error {
	dir := flag.String("dir", ".local", "folder for dev key material, Azurite data and generated configs")
	bin := flag.String("bin", "bin", "folder holding the handler and dpsemu binaries")
	azurite := flag.String("azurite", filepath.Join(".tools", "node_modules", ".bin", "azurite"), "the azurite executable")
	sample := flag.String("sample", "local.settings.sample.json", "the settings sample")
	settingsFile := flag.String("settings", "local.settings.json", "the settings the stack uses; written from the sample on first run")
	flag.Parse()

	absDir, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	values, err := devstack.ReadSample(*settingsFile)
	if errors.Is(err, fs.ErrNotExist) {
		base, err := devstack.ReadSample(*sample)
		if err != nil {
			return err
		}
		values = devstack.Values(absDir, devstack.DefaultPorts, base)
		if err := devstack.WriteLocalSettings(*settingsFile, values); err != nil {
			return err
		}
		fmt.Printf("devstack: wrote %s from %s\n", *settingsFile, *sample)
	} else if err != nil {
		return err
	}

	noMosquitto := false
	if _, err := exec.LookPath("mosquitto"); err != nil {
		noMosquitto = true
		fmt.Println("devstack: mosquitto is not installed, so there is no IoT Hub stand-in; provisioning still works.")
		fmt.Println("devstack: install it with: sudo apt-get install -y mosquitto mosquitto-clients")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var dpsEnv []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "DPSEMU_") {
			dpsEnv = append(dpsEnv, kv)
		}
	}
	stack, err := devstack.Start(ctx, devstack.Options{
		Dir: absDir, BinDir: *bin, AzuriteBin: *azurite, Settings: values,
		DPSEnv: dpsEnv, NoMosquitto: noMosquitto, Log: os.Stdout,
	})
	if err != nil {
		return err
	}
	defer stack.Stop()
	fmt.Printf(`
devstack: the local stack is up.
  device API       %s  (GET /healthz)
  DPS emulator     https://localhost:%d  (ID scope %s)
  IoT Hub stand-in mqtts://localhost:%d  (mosquitto)
  Azurite          queues :%d, tables :%d
  dev secrets      %s
Try the device flow in README.md. Ctrl-C stops everything.

`, stack.BaseURL, devstack.DefaultPorts.DPS, devstack.DPSIDScope, devstack.DefaultPorts.MQTT,
		devstack.DefaultPorts.Queue, devstack.DefaultPorts.Table, stack.Material.SecretsDir())
	name, err := stack.Wait(ctx)
	if err == nil {
		return fmt.Errorf("%s exited; stopping the stack", name)
	}
	fmt.Println("\ndevstack: stopping")
	return nil
}
